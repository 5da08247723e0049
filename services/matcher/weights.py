"""The score weights in force: adopted by staff (``PUT /api/weights``), kept in the database
above ``TANDEM_WEIGHTS`` and the defaults, with who set them, when and why."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.matcher import tables
from services.matcher.domain.scoring import CRITERIA, Weights


def normalised(values: Mapping[str, float]) -> Weights:
    """Weights from ``{criterion: value}``: criteria left out weigh 0, the result sums to 1.

    Raises ``ValueError`` (naming the criterion) for unknown criteria, negative or non-finite
    values and when all are 0."""
    unknown = sorted(set(values) - set(CRITERIA))
    if unknown:
        raise ValueError(f"unknown criterion {unknown[0]!r}; known: {', '.join(CRITERIA)}")
    given = Weights(**{c: values.get(c, 0.0) for c in CRITERIA})
    return Weights(**given.normalised())


def _weights(row: Mapping[str, Any] | RowMapping) -> Weights:
    stored: dict[str, float] = row["weights"]
    return Weights(**{c: float(stored.get(c, 0.0)) for c in CRITERIA})


async def adopted(connection: AsyncConnection) -> Weights | None:
    """The weights staff adopted last, or None if they never did."""
    w = tables.weights
    row = (
        await connection.execute(select(w).order_by(w.c.seq.desc()).limit(1))
    ).mappings().first()  # fmt: skip
    return _weights(row) if row is not None else None


async def in_force(engine: AsyncEngine, configured: Weights) -> Weights:
    """The adopted weights, else ``configured`` (``TANDEM_WEIGHTS`` or the defaults)."""
    async with engine.connect() as connection:
        return await adopted(connection) or configured


async def record(
    connection: AsyncConnection, weights: Weights, reason: str, actor: str, at: dt.datetime
) -> dict[str, Any]:
    """Record adopted weights (in the caller's transaction)."""
    row = {"weights": weights.as_dict(), "reason": reason, "set_by": actor, "set_at": at}
    await connection.execute(insert(tables.weights).values(**row))
    return _out(row)


def _out(row: Mapping[str, Any] | RowMapping) -> dict[str, Any]:
    return {
        "weights": _weights(row).as_dict(),
        "set_by": row["set_by"],
        "set_at": row["set_at"].isoformat(),
        "reason": row["reason"],
    }


async def history(engine: AsyncEngine, configured: Weights) -> dict[str, Any]:
    """``GET /api/weights``: the weights in force, who set them, when and why, and the earlier
    ones newest first. Without adopted weights: the configured ones (``set_by`` null)."""
    w = tables.weights
    async with engine.connect() as connection:
        rows = (await connection.execute(select(w).order_by(w.c.seq.desc()))).mappings().all()
    records = [_out(r) for r in rows]
    configured_out = {
        "weights": Weights(**configured.normalised()).as_dict(),
        "set_by": None,
        "set_at": None,
        "reason": "Einstellung (TANDEM_WEIGHTS oder Standard)",
    }
    current = records[0] if records else configured_out
    earlier = [*records[1:], configured_out] if records else []
    return {**current, "source": "adopted" if records else "settings", "history": earlier}
