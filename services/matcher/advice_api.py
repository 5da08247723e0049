"""HTTP API of collegial advice: coordinators ask for their own city, staff for any."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas.member import MemberId, TopicList
from services.infra.auth import Principal
from services.infra.http import SafeRoute, require
from services.matcher import advice_desk
from services.matcher.domain.advice import AdviceRequest
from services.matcher.service import MatcherService

router = APIRouter(prefix="/api/advice-requests", tags=["advice"], route_class=SafeRoute)
Asker = Annotated[Principal, Depends(require("coordinator", "staff"))]


class AdviceRequestBody(BaseModel):
    """What a coordinator needs advice on."""

    city_id: MemberId
    topics: TopicList = Field(min_length=1)
    question: str = Field(default="", max_length=4000)
    k: int = Field(default=3, ge=1, le=20)


def _service(request: Request) -> MatcherService:
    service: MatcherService = request.app.state.matcher
    return service


Service = Annotated[MatcherService, Depends(_service)]


def _own_city(principal: Principal, city_id: str) -> None:
    if principal.role == "coordinator" and principal.city_id != city_id:
        raise HTTPException(status_code=403, detail="coordinators ask and see only for their city")


@router.post("", status_code=201, summary="Ask the network for collegial advice")
async def ask(body: AdviceRequestBody, principal: Asker, service: Service) -> JSONResponse:
    """Ranked, explained members to talk to (``k`` of them), spread fairly; also published as
    ``advice.requested`` and ``advice.matched``."""
    _own_city(principal, body.city_id)
    if not await advice_desk.known_city(service.engine, body.city_id):
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["body", "city_id"], "type": "unknown_member",
                                 "msg": f"no member {body.city_id!r} is known"}]},
        )  # fmt: skip
    request = AdviceRequest(
        request_id=str(uuid.uuid4()), city_id=body.city_id, topics=tuple(body.topics),
        question=body.question, k=body.k,
    )  # fmt: skip
    answers = await advice_desk.answer(
        service.engine,
        [advice_desk.Asked(request, "http", principal.name)],
        today=service.today(),
        window_days=service.settings.advice_window_days,
        per_advisor_limit=service.settings.advice_per_advisor_limit,
    )
    service.relay.wake()
    return JSONResponse(status_code=201, content=answers[request.request_id])


@router.get("/{request_id}", summary="An advice request and its matches")
async def get(request_id: str, principal: Asker, service: Service) -> dict[str, Any]:
    """404 if unknown; 403 for another city's coordinator."""
    found = await advice_desk.get_request(service.engine, request_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no advice request {request_id!r}")
    _own_city(principal, found["city_id"])
    return found
