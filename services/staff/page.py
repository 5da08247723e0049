"""Routes of the staff page.

Server-rendered (Jinja2) with a few lines of plain JavaScript. The staff token is entered once:
``POST /ui/login`` checks it and keeps it in an HttpOnly, SameSite=Strict cookie, so page
scripts never see it and other sites cannot send it; every route below checks it again. Forms
work without JavaScript (post, then redirect); with it, they are sent in the background and
the page refreshes its main part, which it also does when the matcher's state changes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from schemas.topics import TOPICS, topic_label
from services.api_errors import StaffRoute
from services.infra.auth import Principal
from services.matcher import advice_desk
from services.matcher.domain.advice import AdviceRequest
from services.matcher.domain.explain import CRITERIA_DE, german_number
from services.matcher.domain.lifecycle import ProposalStatus, rejection_reason
from services.matcher.service import MatcherService
from services.staff import geo, view

COOKIE = "tandem_staff"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(
    criteria=CRITERIA_DE, number=german_number, topic_label=topic_label,
    topics=TOPICS, outline=geo.outline_path(), map_width=geo.WIDTH, map_height=geo.HEIGHT,
)  # fmt: skip
# The route class refuses U+0000 in forms and answers the matcher's errors in German
# (services.api_errors).
router = APIRouter(include_in_schema=False, route_class=StaffRoute)


def _staff(request: Request) -> Principal | None:
    token = request.cookies.get(COOKIE, "")
    principal = request.app.state.tokens.lookup(token) if token else None
    return principal if principal is not None and principal.role == "staff" else None


def _require(request: Request) -> tuple[Principal, MatcherService]:
    principal = _staff(request)
    if principal is None:
        raise HTTPException(status_code=401, detail="Bitte mit dem Staff-Token anmelden.")
    matcher: MatcherService | None = request.app.state.matcher
    if matcher is None:
        raise HTTPException(status_code=503, detail="Der Matcher läuft nicht in diesem Prozess.")
    return principal, matcher


@router.get("/", response_class=HTMLResponse)
async def page(request: Request) -> Response:
    """The page, or only the login without a valid staff cookie."""
    principal = _staff(request)
    if principal is None:
        return templates.TemplateResponse(request, "login.html", {"error": None})
    matcher: MatcherService | None = request.app.state.matcher
    context: dict[str, Any] = {"principal": principal, "advice": None}
    if matcher is not None:
        context["o"] = await view.overview(matcher)
        context["version"] = await view.version(matcher)
    return templates.TemplateResponse(request, "page.html", context)


@router.post("/ui/login")
async def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
    """Check the token once and keep it in a cookie the page's scripts cannot read."""
    principal = request.app.state.tokens.lookup(token.strip()) if token.strip() else None
    if principal is None or principal.role != "staff":
        message = (
            "Unbekanntes Token." if principal is None
            else "Dieses Token gehört nicht zum Programmteam (Rolle staff nötig)."
        )  # fmt: skip
        return templates.TemplateResponse(
            request, "login.html", {"error": message}, status_code=401 if principal is None else 403
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE, token.strip(), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", max_age=12 * 3600,
    )  # fmt: skip
    return response


@router.post("/ui/logout")
async def logout() -> Response:
    """Forget the token."""
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/ui/fragments/main", response_class=HTMLResponse)
async def main_fragment(request: Request) -> Response:
    """The page's main part, for refreshing without a reload."""
    principal, matcher = _require(request)
    return templates.TemplateResponse(
        request, "_main.html", {"principal": principal, "o": await view.overview(matcher)}
    )


@router.get("/ui/fragments/cities", response_class=HTMLResponse)
async def cities_fragment(request: Request) -> Response:
    """The advice form's member options, so members registered later appear too."""
    _, matcher = _require(request)
    return templates.TemplateResponse(request, "_cities.html", {"o": await view.overview(matcher)})


@router.get("/ui/version", response_class=PlainTextResponse)
async def state_version(request: Request) -> str:
    """Changes when proposals or members change; the page polls it."""
    _, matcher = _require(request)
    return await view.version(matcher)


def form_answer(request: Request, message: str) -> Response:
    """The answer to a form that was handled: ``message`` to the page's script, a redirect to
    the page without JavaScript."""
    if request.headers.get("x-requested-with") == "fetch":
        return PlainTextResponse(message)
    return RedirectResponse("/", status_code=303)


@router.post("/ui/proposals/{proposal_id}/accept")
async def accept(request: Request, proposal_id: str) -> Response:
    """Accept a pending proposal."""
    principal, matcher = _require(request)
    await matcher.decide(proposal_id, ProposalStatus.ACCEPTED, principal.name, "")
    return form_answer(request, "ok")


@router.post("/ui/proposals/{proposal_id}/reject")
async def reject(
    request: Request, proposal_id: str, reason: Annotated[str, Form(max_length=2000)] = ""
) -> Response:
    """Reject with a reason (required: a blank one is a 422)."""
    principal, matcher = _require(request)
    await matcher.decide(
        proposal_id, ProposalStatus.REJECTED, principal.name, rejection_reason(reason)
    )
    return form_answer(request, "ok")


@router.post("/ui/proposals/{proposal_id}/choose")
async def choose(
    request: Request, proposal_id: str, mentor_id: Annotated[str, Form(max_length=64)]
) -> Response:
    """Take one of the alternatives instead."""
    principal, matcher = _require(request)
    await matcher.choose(proposal_id, mentor_id, principal.name, "Alternative auf der Staff-Seite")
    return form_answer(request, "ok")


@router.post("/ui/advice", response_class=HTMLResponse)
async def advice(
    request: Request,
    city_id: Annotated[str, Form(max_length=64)],
    topics: Annotated[list[str] | None, Form()] = None,
    question: Annotated[str, Form(max_length=4000)] = "",
    k: Annotated[int, Form(ge=1, le=20)] = 3,
) -> Response:
    """Ask the network for collegial advice on behalf of a member and show the answer."""
    principal, matcher = _require(request)
    chosen = [t for t in (topics or []) if t in TOPICS]
    if not chosen:
        raise HTTPException(status_code=422, detail="Bitte mindestens ein Thema wählen.")
    if not await advice_desk.known_city(matcher.engine, city_id):
        raise HTTPException(status_code=422, detail=f"Mitglied {city_id!r} ist nicht bekannt.")
    try:
        request_model = AdviceRequest(str(uuid.uuid4()), city_id, tuple(chosen), question, k)
    except (ValueError, ValidationError) as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    answers = await advice_desk.answer(
        matcher.engine, [advice_desk.Asked(request_model, "http", principal.name)],
        today=matcher.today(), window_days=matcher.settings.advice_window_days,
        per_advisor_limit=matcher.settings.advice_per_advisor_limit,
    )  # fmt: skip
    matcher.relay.wake()
    return templates.TemplateResponse(
        request, "_advice.html",
        {"advice": answers[request_model.request_id], "o": await view.overview(matcher)},
    )  # fmt: skip
