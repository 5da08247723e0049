"""The registry's HTTP API: register and read members."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Message

from schemas.member import MemberRegistration, MemberUpdate
from services.api_errors import http_error
from services.infra.auth import Principal
from services.infra.http import Page, SafeRoute, require
from services.registry import store
from services.registry.admission import AdmissionRefused, body_violations
from services.registry.service import RegistryService


class AdmissionRoute(SafeRoute):
    """A :class:`SafeRoute` whose 422 for a registration the model refused also names the
    admission rules the body breaks, so one answer names every problem (the model's errors
    alone would hide them until they are fixed)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.path != "/api/members" or "POST" not in (self.methods or ()):
            return handler

        async def with_rules(request: Request) -> Response:
            body = await request.body()

            async def replay() -> Message:
                return {"type": "http.request", "body": body, "more_body": False}

            response = await handler(Request(request.scope, replay))
            if response.status_code != 422 or not isinstance(response, JSONResponse):
                return response
            return _with_rules(response, body)

        return with_rules


def _with_rules(response: JSONResponse, body: bytes) -> JSONResponse:
    detail = json.loads(bytes(response.body)).get("detail")
    try:
        given = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return response
    if not isinstance(detail, list):
        return response
    invalid = {
        str(e["loc"][1]) for e in detail if isinstance(e, dict) and len(e.get("loc", ())) > 1
    }
    rules = body_violations(given, invalid)
    if not rules:
        return response
    detail += [{"loc": ["body", v.field], "msg": v.message, "type": v.kind} for v in rules]
    return JSONResponse(status_code=422, content={"detail": detail})


router = APIRouter(prefix="/api/members", tags=["members"], route_class=AdmissionRoute)


async def _service(request: Request) -> RegistryService:
    service: RegistryService = request.app.state.registry
    return service


def _member_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in row.items() if k not in {"created_at", "updated_at"}},
        "joined": row["joined"].isoformat(),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


@router.post("", status_code=201, summary="Register an admitted member")
async def register_member(
    member: MemberRegistration,
    principal: Annotated[Principal, Depends(require("platform", "staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> JSONResponse:
    """Store the member and publish ``city.joined`` (through the outbox, so also when the
    broker is down). 422 naming every broken rule and field, 409 if the id exists.

    A missing population or missing coordinates are looked up in the GeoNames gazetteer by
    name and state; the answer's ``looked_up`` names the fields filled in (also recorded in the
    member's history). A population that cannot be looked up (no entry, or several places of
    that name) is a 422 naming the candidates; coordinates that cannot be stay empty. Topics
    may be given as slugs or German labels (stored as slugs)."""
    try:
        admitted = await service.admit(member, actor=principal.name)
    except AdmissionRefused as refused:
        return _refused(refused)
    except store.DuplicateMember as error:
        raise http_error(error, f"member {error} exists already") from error
    assert admitted is not None  # no guard: always stored or refused
    return JSONResponse(
        status_code=201,
        content={**_member_json(admitted.row), "looked_up": list(admitted.looked_up)},
    )


def _refused(refused: AdmissionRefused) -> JSONResponse:
    """A 422 in FastAPI's shape, one entry per broken rule."""
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {"loc": ["body", v.field], "msg": v.message, "type": v.kind}
                for v in refused.problems
            ]
        },
    )


@router.get("", summary="List members (staff)")
async def list_members(
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
    page: Annotated[Page, Depends()],
) -> dict[str, Any]:
    """Members ordered by id, with contact data (staff only; never on events)."""
    rows, total = await store.list_members(service.engine, page.limit, page.offset)
    return {"items": [_member_json(r) for r in rows], "total": total}


@router.get("/{member_id}", summary="One member (staff)")
async def get_member(
    member_id: str,
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> dict[str, Any]:
    """One member with all fields; 404 if unknown."""
    row = await store.get_member(service.engine, member_id)
    if row is None:
        raise _missing(member_id)
    return _member_json(row)


class LeaveBody(BaseModel):
    """Why the member leaves."""

    reason: str = Field(default="", max_length=2000)


def _missing(member_id: str) -> HTTPException:
    return http_error(store.MemberNotFound(member_id), f"no member {member_id!r}")


@router.patch("/{member_id}", summary="Change profile fields")
async def update_member(
    member_id: str,
    change: MemberUpdate,
    principal: Annotated[Principal, Depends(require("platform", "staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> dict[str, Any]:
    """Same validation as registration; publishes ``city.updated`` when anything changed.
    404 if unknown, 409 if the member left, 422 with per-field errors."""
    try:
        row, _changed = await service.change(member_id, change, actor=principal.name)
    except store.MemberNotFound as error:
        raise _missing(member_id) from error
    except store.MemberLeft as error:
        raise http_error(error, f"member {member_id} left the network") from error
    except store.InvalidChange as error:
        raise RequestValidationError(error.errors) from error
    return _member_json(row)


@router.post("/{member_id}/leave", summary="The member leaves the network")
async def leave(
    member_id: str,
    body: LeaveBody,
    principal: Annotated[Principal, Depends(require("platform", "staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> dict[str, Any]:
    """Publishes ``city.left``; contact data is erased; the record stays (``status: left``)."""
    try:
        row = await service.leave(member_id, body.reason, actor=principal.name)
    except store.MemberNotFound as error:
        raise _missing(member_id) from error
    except store.MemberLeft as error:
        raise http_error(error, f"member {member_id} left already") from error
    return _member_json(row)


@router.get("/{member_id}/history", summary="Every change to a member (staff)")
async def history(
    member_id: str,
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
    page: Annotated[Page, Depends()],
) -> dict[str, Any]:
    """Registration, updates (which fields), departure: who and when."""
    items = await store.history(service.engine, member_id)
    if items is None:
        raise _missing(member_id)
    return page.of(items)
