"""Collegial advice as a use case: answer requests from HTTP or Kafka, fairly, idempotently.

One transaction per batch: read who is active, how often each member was recommended within the
fairness window and the requesters' tandem partners; rank (one request) or assign jointly
(several pending at once); store the answers with their recommendations and queue
``advice.matched`` (and, for HTTP requests, ``advice.requested``) in the outbox.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import AdviceMatch as AdviceMatchEvent
from schemas.events import (
    AdviceMatched,
    AdviceRequested,
    Envelope,
    Topics,
    make_event,
)
from services.infra.deadletter import dead_letter, enqueue_dead_letter, retry_transient
from services.infra.metrics import ADVICE_REQUESTS
from services.infra.outbox import enqueue, utcnow
from services.infra.records import Delivery, Poison, payload_digest
from services.matcher import store, tables
from services.matcher.domain.advice import AdviceMatch, AdviceRequest, assign_advisors
from services.matcher.store import domain_member

if TYPE_CHECKING:
    from services.matcher.service import MatcherService


@dataclass(frozen=True)
class Asked:
    """A request as it arrived, with who asked and how."""

    request: AdviceRequest
    source: str  # "http" or "event"
    requested_by: str


async def _recent_load(connection: AsyncConnection, since: dt.datetime) -> Counter[str]:
    r = tables.advice_recommendations
    result = await connection.execute(select(r.c.city_id).where(r.c.at >= since))
    cities: list[Any] = list(result.scalars())
    return Counter(str(city) for city in cities)


async def _tandem_partners(connection: AsyncConnection, today: dt.date) -> dict[str, set[str]]:
    p = tables.proposals
    rows = (
        await connection.execute(
            select(p.c.newcomer_id, p.c.mentor_id).where(store.running_tandem(p, today))
        )
    ).all()  # fmt: skip
    partners: dict[str, set[str]] = {}
    for newcomer, mentor in rows:
        partners.setdefault(str(newcomer), set()).add(str(mentor))
        partners.setdefault(str(mentor), set()).add(str(newcomer))
    return partners


async def known_city(engine: AsyncEngine, city_id: str) -> bool:
    """Whether the matcher knows ``city_id`` as a member."""
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(tables.members.c.id).where(tables.members.c.id == city_id)
        )
    return found is not None


async def answer(
    engine: AsyncEngine,
    asked: Sequence[Asked],
    *,
    today: dt.date,
    window_days: int,
    per_advisor_limit: int,
) -> dict[str, dict[str, Any]]:
    """Answer ``asked`` together; requests answered before are returned as stored (idempotent
    on ``request_id``). Returns the stored answers by request id."""
    a = tables.advice_requests
    async with engine.begin() as connection:
        ids = [x.request.request_id for x in asked]
        done = {
            row["request_id"]: _stored(row)
            for row in (
                await connection.execute(select(a).where(a.c.request_id.in_(ids)))
            ).mappings()
        }  # fmt: skip
        fresh = [x for x in asked if x.request.request_id not in done]
        if fresh:
            members = [
                domain_member(row)
                for row in (await connection.execute(select(tables.members))).mappings().all()
            ]
            now = utcnow()
            load = await _recent_load(connection, now - dt.timedelta(days=window_days))
            partners = await _tandem_partners(connection, today)
            matches = assign_advisors(
                [x.request for x in fresh], members, today=today, recent_load=load,
                tandem_partners_of=partners, per_advisor_limit=per_advisor_limit,
            )  # fmt: skip
            for item in fresh:
                found = matches.get(item.request.request_id, [])
                done[item.request.request_id] = await _store(connection, item, found, now)
    return {request_id: done[request_id] for request_id in ids}


def _match_out(match: AdviceMatch) -> dict[str, Any]:
    return {
        "city_id": match.city_id,
        "score": round(match.score, 6),
        "reasons": list(match.reasons),
        "tandem_partner": match.tandem_partner,
        "breakdown": {k: round(v, 6) for k, v in match.breakdown.items()},
    }


async def _store(
    connection: AsyncConnection, item: Asked, found: list[AdviceMatch], now: dt.datetime
) -> dict[str, Any]:
    request = item.request
    matches = [_match_out(m) for m in found]
    row = {
        "request_id": request.request_id, "city_id": request.city_id,
        "topics": list(request.topics), "question": request.question, "k": request.k,
        "source": item.source, "requested_by": item.requested_by, "matches": matches,
        "created_at": now,
    }  # fmt: skip
    await connection.execute(insert(tables.advice_requests).values(**row))
    ADVICE_REQUESTS.labels(item.source).inc()
    for match in found:
        await connection.execute(
            insert(tables.advice_recommendations).values(
                request_id=request.request_id, city_id=match.city_id, at=now
            )
        )
    request_uuid = uuid.UUID(request.request_id)
    if item.source == "http":
        asked_event = AdviceRequested(
            request_id=request_uuid, city_id=request.city_id, topics=list(request.topics),
            question=request.question, k=request.k,
        )  # fmt: skip
        await enqueue(
            connection, tables.outbox,
            make_event(Topics.ADVICE_REQUESTED, "api", asked_event), request.city_id,
        )  # fmt: skip
    answered = AdviceMatched(
        request_id=request_uuid,
        city_id=request.city_id,
        matches=[
            AdviceMatchEvent(city_id=m["city_id"], score=m["score"], reasons=m["reasons"])
            for m in matches
        ],
    )
    await enqueue(
        connection, tables.outbox,
        make_event(Topics.ADVICE_MATCHED, "matcher", answered), request.city_id,
    )  # fmt: skip
    return _stored(row)


def _stored(row: Any) -> dict[str, Any]:
    created = row["created_at"]
    return {
        "request_id": row["request_id"],
        "city_id": row["city_id"],
        "topics": row["topics"],
        "question": row["question"],
        "k": row["k"],
        "source": row["source"],
        "matches": row["matches"],
        "created_at": created.isoformat() if created else None,
    }


async def get_request(engine: AsyncEngine, request_id: str) -> dict[str, Any] | None:
    """A stored request with its matches."""
    a = tables.advice_requests
    async with engine.connect() as connection:
        row = (
            await connection.execute(select(a).where(a.c.request_id == request_id))
        ).mappings().first()  # fmt: skip
    return _stored(row) if row else None


async def answer_advice_deliveries(
    service: MatcherService, deliveries: Sequence[Delivery | Poison]
) -> None:
    """Answer the ``advice.requested`` records of a batch jointly (they are pending at once);
    invalid ones, and envelope ids seen before with other data, go to
    ``advice.requested.dlq``. Idempotent on ``request_id``: a replayed request gets its stored
    answer and nothing is published again."""
    decoded = [d for d in deliveries if isinstance(d, Delivery)]
    dead = [
        dead_letter(p, p.error, consumer="matcher") for p in deliveries if isinstance(p, Poison)
    ]

    async def screen() -> list[Envelope[Any]]:
        """Record the envelope ids with their digests and bury the dead (one transaction);
        the answer's own idempotency is the request id, so a known id with the same data
        goes on to it (and gets its stored answer)."""
        letters, fresh = list(dead), []
        async with service.engine.begin() as connection:
            digested = [(d, payload_digest(d.envelope)) for d in decoded]
            seen = await store.recorded_digests(
                connection, [(str(d.envelope.id), d.envelope.type, h) for d, h in digested]
            )
            for delivery, digest in digested:
                envelope = delivery.envelope
                earlier = seen.setdefault(str(envelope.id), digest)
                if earlier is not None and earlier != digest:
                    reason = f"envelope id {envelope.id} was used before for other data"
                    letters.append(dead_letter(delivery, reason, consumer="matcher"))
                else:
                    fresh.append(envelope)
            for letter in letters:
                await enqueue_dead_letter(connection, tables.outbox, letter)
        return fresh

    asked: dict[str, Asked] = {}
    for envelope in await retry_transient(screen):
        data: AdviceRequested = envelope.data
        request = AdviceRequest(
            request_id=str(data.request_id), city_id=data.city_id, topics=tuple(data.topics),
            question=data.question, k=data.k,
        )  # fmt: skip
        asked[request.request_id] = Asked(request, "event", envelope.source)
    if asked:
        await retry_transient(
            lambda: answer(
                service.engine, list(asked.values()), today=service.today(),
                window_days=service.settings.advice_window_days,
                per_advisor_limit=service.settings.advice_per_advisor_limit,
            )
        )  # fmt: skip
    service.relay.wake()
