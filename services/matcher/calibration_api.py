"""The matcher's HTTP API for weights: calibration from decisions, preview, adoption."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, field_validator

from services.infra.auth import Principal
from services.infra.http import SafeRoute, require
from services.matcher import calibration
from services.matcher import weights as weights_store
from services.matcher.domain.scoring import CRITERIA, Weights
from services.matcher.service import MatcherService

router = APIRouter(prefix="/api", tags=["weights"], route_class=SafeRoute)


def _service(request: Request) -> MatcherService:
    service: MatcherService = request.app.state.matcher
    return service


Staff = Annotated[Principal, Depends(require("staff"))]
Service = Annotated[MatcherService, Depends(_service)]


class WeightsBody(BaseModel):
    """Score weights by criterion; criteria left out weigh 0; scaled to sum 1."""

    weights: dict[str, float] = Field(
        description=f"Weight per criterion ({', '.join(CRITERIA)}): numbers >= 0, not all 0; "
        "criteria left out weigh 0. They are scaled to sum 1.",
        examples=[{"topics": 0.3, "population": 0.2, "geography": 0.4, "experience": 0.05,
                   "network": 0.05}],
    )  # fmt: skip

    @field_validator("weights")
    @classmethod
    def _valid(cls, value: dict[str, float]) -> dict[str, float]:
        weights_store.normalised(value)  # ValueError -> 422 naming the criterion
        return value

    def parsed(self) -> Weights:
        """The weights, scaled to sum 1 (the same for preview and adoption)."""
        return weights_store.normalised(self.weights)


class AdoptBody(WeightsBody):
    """Weights to adopt and why."""

    reason: str = Field(min_length=1, max_length=2000, description="Why (kept in the history)")

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a reason is needed")
        return value.strip()


@router.get("/calibration", summary="Weights fitted to the staff decisions (staff)")
async def get_calibration(_: Staff, service: Service) -> dict[str, Any]:
    """Fits the weights to the decisions so far (conditional logit; see docs/matching.md) and
    reports how the current and the fitted weights agree with held-out decisions, and which
    pending proposals the fitted weights would change. Changes nothing."""
    return await calibration.report_of(service)


@router.post("/plans/preview", summary="What other weights would change (staff)")
async def preview(body: WeightsBody, _: Staff, service: Service) -> dict[str, Any]:
    """The pending proposals whose mentor the given weights would change (``to`` null: the
    newcomer would get none; ``from`` null: it has none yet), and how many stay. Stores and
    publishes nothing."""
    return await calibration.preview_on(service, body.parsed())


@router.put("/weights", summary="Adopt weights (staff)")
async def put_weights(body: AdoptBody, principal: Staff, service: Service) -> dict[str, Any]:
    """Records the weights (who, when, why; kept across restarts, above ``TANDEM_WEIGHTS``),
    re-plans every pending proposal with them and supersedes those whose mentor changes:
    exactly the changes ``POST /api/plans/preview`` shows for the same state."""
    return await calibration.adopt_on(service, body.parsed(), body.reason, principal.name)


@router.get("/weights", summary="The weights in force and their history (staff)")
async def get_weights(_: Staff, service: Service) -> dict[str, Any]:
    """The current weights, who set them, when and why, and the earlier ones (newest first;
    the last is the configured ``TANDEM_WEIGHTS`` or the defaults)."""
    return await weights_store.history(service.engine, service.weights)
