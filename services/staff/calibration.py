"""The staff page's panel on weights learned from decisions: what staff decided so far, how well
the current and the fitted weights agree with it, what the fitted weights would change, and a
button to adopt them (with a reason). Its own routes, template and script, next to the page."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from schemas.geo import great_circle_km
from services.matcher import calibration, tables
from services.matcher import weights as weights_store
from services.matcher.domain.scoring import CRITERIA
from services.staff.page import _require, form_answer, templates

router = APIRouter(include_in_schema=False)


def percent(value: float | None) -> str:
    """0.4583 -> '46 %'; None -> '–'."""
    return "–" if value is None else f"{value * 100:.0f} %"


def rank(value: float | None) -> str:
    """1.0417 -> '1,04'; None -> '–'."""
    return "–" if value is None else f"{value:.2f}".replace(".", ",")


def when(value: str | None) -> str:
    """An ISO time as '01.12.2026, 14:05 UTC'."""
    if not value:
        return ""
    return dt.datetime.fromisoformat(value).strftime("%d.%m.%Y, %H:%M UTC")


@router.get("/ui/fragments/calibration", response_class=HTMLResponse)
async def panel(request: Request) -> Response:
    """The panel (loaded by the page, refreshed when proposals change)."""
    _, matcher = _require(request)
    report = await calibration.report_of(matcher)
    record = await weights_store.history(matcher.engine, matcher.weights)
    m = tables.members
    async with matcher.engine.connect() as connection:
        rows = (await connection.execute(select(m.c.id, m.c.name, m.c.lat, m.c.lon))).all()
    names = {str(r[0]): str(r[1]) for r in rows}
    places = {str(r[0]): (r[2], r[3]) for r in rows if r[2] is not None and r[3] is not None}

    def pair(newcomer_id: str, mentor_id: str | None) -> str:
        """'Lemgo (140 km)': the mentor and how far it is from the newcomer."""
        if mentor_id is None:
            return "kein Vorschlag"
        name = names.get(mentor_id, mentor_id)
        if newcomer_id in places and mentor_id in places:
            return f"{name} ({great_circle_km(*places[newcomer_id], *places[mentor_id]):.0f} km)"
        return name

    return templates.TemplateResponse(
        request, "_calibration.html",
        {"c": report, "record": record, "names": names, "pair": pair, "percent": percent,
         "rank": rank, "when": when},
    )  # fmt: skip


@router.post("/ui/weights")
async def adopt(request: Request, reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """Adopt the weights shown (the fitted ones, as fields ``w_<criterion>``) with a reason:
    the same as ``PUT /api/weights``."""
    principal, matcher = _require(request)
    if not reason.strip():
        raise HTTPException(status_code=422, detail="Bitte einen Grund für die Übernahme angeben.")
    form = await request.form()
    try:
        given = {c: float(str(form[f"w_{c}"])) for c in CRITERIA if f"w_{c}" in form}
        weights = weights_store.normalised(given)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=f"Ungültige Gewichte: {error}") from error
    await calibration.adopt_on(matcher, weights, reason.strip(), principal.name)
    return form_answer(request, "Gewichte übernommen.")
