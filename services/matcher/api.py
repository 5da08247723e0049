"""The matcher's HTTP API: proposals and staff decisions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, field_validator

from services.api_errors import ApiRoute
from services.infra.auth import Principal
from services.infra.http import Page, require
from services.matcher import store
from services.matcher.decisions import Decision, ProposalNotFound
from services.matcher.domain.lifecycle import ProposalStatus, rejection_reason
from services.matcher.service import MatcherService

# Errors of the service layer are answered by the route class (services.api_errors).
router = APIRouter(prefix="/api", tags=["proposals"], route_class=ApiRoute)


class RejectBody(BaseModel):
    """Why staff reject a proposal (not blank: the pair is never proposed again)."""

    reason: str = Field(min_length=1, max_length=2000)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, reason: str) -> str:
        return rejection_reason(reason)


class AcceptBody(BaseModel):
    """An optional note on an acceptance, and when the tandem began if not today."""

    reason: str = Field(default="", max_length=2000)
    started_on: dt.date | None = Field(
        default=None,
        description="When the tandem began (today if absent; not in the future). It runs the "
        "configured number of months from then.",
    )


def _service(request: Request) -> MatcherService:
    service: MatcherService = request.app.state.matcher
    return service


Staff = Annotated[Principal, Depends(require("staff"))]
Service = Annotated[MatcherService, Depends(_service)]
Paged = Annotated[Page, Depends()]


@router.get("/proposals", summary="Tandem proposals, newest first (staff)")
async def list_proposals(
    _: Staff,
    service: Service,
    page: Annotated[Page, Depends()],
    status: Annotated[ProposalStatus | None, Query()] = None,
    newcomer_id: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Proposals with breakdown, reasons, alternatives and lifecycle."""
    items, total = await store.list_proposals(
        service.engine, status, page.limit, page.offset, newcomer_id
    )
    return {"items": items, "total": total}


@router.get("/proposals/{proposal_id}", summary="One proposal (staff)")
async def get_proposal(proposal_id: str, _: Staff, service: Service) -> dict[str, Any]:
    """One proposal; 404 if unknown."""
    async with service.engine.connect() as connection:
        row = await store.get_proposal(connection, proposal_id)
    if row is None:
        raise ProposalNotFound(proposal_id)
    return store.proposal_out(row)


async def _decide(
    service: MatcherService, proposal_id: str, decision: Decision,
    principal: Principal, reason: str, started: dt.date | None = None,
) -> dict[str, Any]:  # fmt: skip
    return await service.decide(proposal_id, decision, principal.name, reason, started)


@router.post("/proposals/{proposal_id}/accept", summary="Accept a pending proposal (staff)")
async def accept(
    proposal_id: str, principal: Staff, service: Service, body: AcceptBody | None = None
) -> dict[str, Any]:
    """Accept; 409 unless pending. The tandem uses one unit of the mentor's capacity."""
    started = body.started_on if body else None
    if started is not None and started > service.today():
        raise HTTPException(
            status_code=422,
            detail=[{"loc": ["body", "started_on"], "msg": "must not be in the future",
                     "type": "value_error"}],
        )  # fmt: skip
    return await _decide(
        service, proposal_id, ProposalStatus.ACCEPTED, principal, body.reason if body else "",
        started,
    )  # fmt: skip


@router.post("/proposals/{proposal_id}/reject", summary="Reject a pending proposal (staff)")
async def reject(
    proposal_id: str, body: RejectBody, principal: Staff, service: Service
) -> dict[str, Any]:
    """Reject with a reason; the pair is never proposed again and the newcomer gets a new
    proposal."""
    return await _decide(service, proposal_id, ProposalStatus.REJECTED, principal, body.reason)


class ChooseBody(BaseModel):
    """Which alternative staff take instead of the proposed mentor."""

    mentor_id: str = Field(pattern=r"^[a-z0-9-]{2,64}$")
    reason: str = Field(default="", max_length=2000)


@router.post("/proposals/{proposal_id}/choose", summary="Take an alternative instead (staff)")
async def choose(
    proposal_id: str, body: ChooseBody, principal: Staff, service: Service
) -> dict[str, Any]:
    """Accept one of the proposal's alternatives and reject the proposal, in one step.
    409 unless pending or if the pair is no longer possible; 422 if not an alternative."""
    return await service.choose(proposal_id, body.mentor_id, principal.name, body.reason)


class PairRuleBody(BaseModel):
    """A staff rule for a pair: it must be proposed (pinned) or never be (forbidden)."""

    rule: Literal["pinned", "forbidden"]


MemberPath = Annotated[str, Path(pattern=r"^[a-z0-9-]{2,64}$")]


@router.get("/pairs", summary="Pinned and forbidden pairs (staff)")
async def list_pairs(_: Staff, service: Service, page: Paged) -> dict[str, Any]:
    """Every pair rule."""
    return page.of(await store.list_pair_rules(service.engine))


@router.put("/pairs/{newcomer_id}/{mentor_id}", summary="Pin or forbid a pair (staff)")
async def put_pair(
    newcomer_id: MemberPath, mentor_id: MemberPath, body: PairRuleBody, principal: Staff,
    service: Service,
) -> dict[str, Any]:  # fmt: skip
    """A pinned pair is a hard constraint of the next solve (dropped, with the reason in the
    log, if impossible); a forbidden pair is never proposed."""
    if newcomer_id == mentor_id:
        raise HTTPException(status_code=422, detail="a member cannot be paired with itself")
    await service.set_pair_rule(newcomer_id, mentor_id, body.rule, principal.name)  # 404: unknown
    return {"newcomer_id": newcomer_id, "mentor_id": mentor_id, "rule": body.rule}


@router.delete(
    "/pairs/{newcomer_id}/{mentor_id}", status_code=204, summary="Lift a pair rule (staff)"
)
async def delete_pair(
    newcomer_id: MemberPath, mentor_id: MemberPath, _: Staff, service: Service
) -> None:
    """Remove the pin or ban of a pair; 404 if there was none."""
    if not await service.delete_pair_rule(newcomer_id, mentor_id):
        raise HTTPException(status_code=404, detail="no rule for this pair")


@router.get("/newcomers/waiting", summary="Newcomers without a proposal, and why (staff)")
async def waiting(_: Staff, service: Service, page: Paged) -> dict[str, Any]:
    """Newcomers the last solve could not match, with the reason."""
    return page.of(await store.waiting_newcomers(service.engine))


@router.get("/matcher/status", summary="What the matcher knows and did (staff)")
async def matcher_status(_: Staff, service: Service) -> dict[str, Any]:
    """Counts of members and proposals, solves so far, outbox backlog."""
    counts = await store.status_counts(service.engine)
    last = service.last_solve
    return {
        **counts,
        "solves": service.solves,
        "last_solve": last.__dict__ if last else None,
        "outbox_backlog": await service.relay.backlog(),
    }
