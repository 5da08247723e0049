"""The matcher's options (beside the common ones)."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.infra.settings import CommonSettings
from services.matcher.domain.scoring import Weights


class MatcherSettings(CommonSettings):
    """Options of the matcher."""

    matcher_group_id: str = Field(
        default="tandem-matcher", description="Consumer group of the matcher."
    )
    weights: str | None = Field(
        default=None,
        description="Score weights, e.g. `topics=0.4,population=0.2`; unset: the defaults. "
        "Weights staff adopt (`PUT /api/weights`) take precedence.",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is not None:
            Weights.parse(value)  # raises ValueError naming the problem
        return value

    tandem_months: int = Field(default=12, ge=1, le=120, description="How long a tandem runs.")
    solve_debounce_ms: int = Field(
        default=10, ge=0, le=10_000, description="Quiet time that coalesces a burst into a solve."
    )
    solve_max_delay_ms: int = Field(
        default=100, ge=0, le=60_000, description="Longest a change waits for its solve."
    )
    solve_backlog_max_delay_ms: int = Field(
        default=3_000,
        ge=0,
        le=60_000,
        description="Longest a change of a burst waits for its solve while records of the "
        "burst still wait to be ingested (the consumer is behind, or has not yet heard from "
        "the broker that the burst ended): a burst becomes one solve.",
    )
    solve_burst_records: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Records since the last solve, with those still to be ingested, that "
        "make a burst: its solve waits for them and until the broker answered that nothing "
        "more arrived (within the backlog delay), unless its batches thinned to under a tenth "
        "of this. Fewer (joins one by one) wait for records on their way within the longest "
        "delay only.",
    )
    advice_window_days: int = Field(
        default=90, ge=1, le=3650, description="Fairness window: recent recommendations count."
    )
    advice_per_advisor_limit: int = Field(
        default=2, ge=1, le=100, description="Requests one member may answer in a joint solve."
    )
