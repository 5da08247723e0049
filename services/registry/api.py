"""The registry's HTTP API: register and read members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas.member import MemberRegistration, MemberUpdate
from services.infra.auth import Principal
from services.infra.http import Page, SafeRoute, field_errors, require
from services.registry import gazetteer, store
from services.registry.admission import admission_violations
from services.registry.service import RegistryService

router = APIRouter(prefix="/api/members", tags=["members"], route_class=SafeRoute)


async def _service(request: Request) -> RegistryService:
    service: RegistryService = request.app.state.registry
    return service


def _out(row: dict[str, Any]) -> dict[str, Any]:
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
    broker is down). 422 with per-field errors, 409 if the id exists.

    A missing population or missing coordinates are looked up in the GeoNames gazetteer by
    name and state; the answer's ``looked_up`` names the fields filled in (also recorded in the
    member's history). A population that cannot be looked up (no entry, or several places of
    that name) is a 422 naming the candidates; coordinates that cannot be stay empty."""
    try:
        completion = await gazetteer.fill_in(member)
    except gazetteer.GazetteerError as error:
        return field_errors([("population", str(error))], kind="gazetteer")
    member = completion.member
    violations = admission_violations(member)
    if violations:
        return field_errors([(v.field, v.message) for v in violations])
    try:
        row = await service.register(member, actor=principal.name, looked_up=completion.looked_up)
    except store.DuplicateMember as error:
        raise HTTPException(status_code=409, detail=f"member {error} exists already") from error
    return JSONResponse(
        status_code=201, content={**_out(row), "looked_up": list(completion.looked_up)}
    )


@router.get("", summary="List members (staff)")
async def list_members(
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
    page: Annotated[Page, Depends()],
) -> dict[str, Any]:
    """Members ordered by id, with contact data (staff only; never on events)."""
    rows, total = await store.list_members(service.engine, page.limit, page.offset)
    return {"items": [_out(r) for r in rows], "total": total}


@router.get("/{member_id}", summary="One member (staff)")
async def get_member(
    member_id: str,
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> dict[str, Any]:
    """One member with all fields; 404 if unknown."""
    row = await store.get_member(service.engine, member_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no member {member_id!r}")
    return _out(row)


class LeaveBody(BaseModel):
    """Why the member leaves."""

    reason: str = Field(default="", max_length=2000)


def _missing(member_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no member {member_id!r}")


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
        row, _changed = await service.update(member_id, change, actor=principal.name)
    except store.MemberNotFound as error:
        raise _missing(member_id) from error
    except store.MemberLeft as error:
        raise HTTPException(
            status_code=409, detail=f"member {member_id} left the network"
        ) from error
    except store.InvalidChange as error:
        raise RequestValidationError(error.errors) from error
    return _out(row)


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
        raise HTTPException(status_code=409, detail=f"member {member_id} left already") from error
    return _out(row)


@router.get("/{member_id}/history", summary="Every change to a member (staff)")
async def history(
    member_id: str,
    _: Annotated[Principal, Depends(require("staff"))],
    service: Annotated[RegistryService, Depends(_service)],
) -> dict[str, Any]:
    """Registration, updates (which fields), departure: who and when."""
    items = await store.history(service.engine, member_id)
    if items is None:
        raise _missing(member_id)
    return {"items": items, "total": len(items)}
