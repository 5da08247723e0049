"""The event pipeline: ``city.joined`` in, ``tandem.proposed`` out, next to the bare broker.

The matcher runs as ``tandem matcher --broker ...`` in its own process (as docker-compose runs
it) against a fresh embedded broker. The bench process produces with aiokafka and reads with
aiokafka, the same way for the pipeline and for the bare-broker reference:

* reference: the same N ``city.joined`` messages (same keys, same bytes) to a topic nobody else
  reads, timed from the first send until a consumer has received the N-th;
* burst: N newcomers join at once against the existing members; timed from the first send
  until the last ``tandem.proposed`` of the final plan is on the broker (received by the same
  kind of consumer), confirmed by the matcher's status (every newcomer planned, outbox empty);
* steady: newcomers join at a steady rate; per newcomer the time from its ``city.joined`` being
  sent to its first ``tandem.proposed`` being received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from schemas.events import CityJoined, Topics, make_event
from services.bench.harness import (
    Service,
    Tap,
    median,
    percentile,
    producer,
    running_broker,
    send_all,
    service_running,
    solve_seconds,
    staff_get,
)
from services.bench.synthetic import Synthetic, generate
from services.matcher import store

REFERENCE_TOPIC = "bench.reference"
#: How often ``settle`` asks the matcher for its status (seconds).
SETTLE_POLL_S = 0.25
Message = tuple[bytes, bytes]


def joined_messages(members: Sequence[Synthetic]) -> list[Message]:
    """``city.joined`` records as the registry's relay sends them: (key, envelope JSON)."""
    return [
        (
            m.id.encode(),
            make_event(Topics.CITY_JOINED, "registry", CityJoined.model_validate(m.public()))
            .model_dump_json()
            .encode(),
        )
        for m in members
    ]


@dataclass(frozen=True)
class BurstRun:
    """One burst next to its reference, measured on the same fresh broker."""

    events: int
    seconds: float
    broker_seconds: float
    proposals_published: int
    solves: int
    matcher_rss_mb: float


async def _status(client: httpx.AsyncClient, matcher: Service) -> dict[str, int]:
    data = await staff_get(client, f"{matcher.url}/api/matcher/status")
    statuses = store.PROPOSAL_STATUSES
    return {
        "members": int(data["members"]),
        "planned": int(data["pending"]) + int(data["waiting"]),
        "proposals": sum(int(data[s]) for s in statuses),
        "backlog": int(data["outbox_backlog"]),
        "solves": int(data["solves"]),
    }


async def settle(
    client: httpx.AsyncClient,
    matcher: Service,
    tap: Tap | None,
    members: int,
    newcomers: int,
    timeout: float,
) -> dict[str, int]:
    """Wait until the matcher knows ``members``, has planned all ``newcomers`` (a proposal or a
    waiting reason each), its outbox is empty and ``tap`` received every proposal event.

    Asks every ``SETTLE_POLL_S``: each status answer costs the matcher a few milliseconds of
    its event loop (HTTP, four counts), taken from the solve it is timing; the figures come
    from the tap's arrival times, not from when this notices the end."""
    deadline = time.monotonic() + timeout
    status: dict[str, int] = {}
    while time.monotonic() < deadline:
        status = await _status(client, matcher)
        if (
            status["members"] == members
            and status["planned"] == newcomers
            and status["backlog"] == 0
            and (tap is None or len(tap.arrivals) >= status["proposals"])
        ):
            return status
        await asyncio.sleep(SETTLE_POLL_S)
    raise TimeoutError(f"matcher did not settle in {timeout:.0f} s: {status}")


async def reference_seconds(bootstrap: str, messages: Sequence[Message]) -> float:
    """The bare broker: the same messages from an aiokafka producer to an aiokafka consumer."""
    tap = Tap(bootstrap, REFERENCE_TOPIC)
    await tap.start()
    sender = producer(bootstrap)
    await sender.start()
    try:
        started = time.monotonic()
        await send_all(sender, REFERENCE_TOPIC, messages)
        await tap.wait_for(len(messages), timeout=120)
        return tap.arrivals[len(messages) - 1][0] - started
    finally:
        await sender.stop()
        await tap.stop()


async def burst(existing: Sequence[Synthetic], newcomers: Sequence[Synthetic]) -> BurstRun:
    """One burst run on a fresh broker and a fresh matcher, with its reference first."""
    preload = joined_messages(existing)
    messages = joined_messages(newcomers)
    async with running_broker() as broker:
        broker_seconds = await reference_seconds(broker.bootstrap, messages)
        async with (
            service_running("matcher", broker.bootstrap) as matcher,
            httpx.AsyncClient(timeout=30) as client,
        ):
            sender = producer(broker.bootstrap)
            await sender.start()
            tap = Tap(broker.bootstrap, Topics.TANDEM_PROPOSED)
            try:
                await send_all(sender, Topics.CITY_JOINED, preload)
                await settle(client, matcher, None, len(existing), 0, timeout=120)
                await tap.start()
                solves_before = (await _status(client, matcher))["solves"]
                started = time.monotonic()
                await send_all(sender, Topics.CITY_JOINED, messages)
                status = await settle(
                    client, matcher, tap, len(existing) + len(messages), len(messages), 600
                )
                if not tap.arrivals:
                    raise RuntimeError("the matcher proposed nothing")
                seconds = tap.arrivals[-1][0] - started
                rss = matcher.peak_rss_mb()
            finally:
                await tap.stop()
                await sender.stop()
    return BurstRun(
        events=len(messages),
        seconds=seconds,
        broker_seconds=broker_seconds,
        proposals_published=len(tap.arrivals),
        solves=status["solves"] - solves_before,
        matcher_rss_mb=rss,
    )


@dataclass(frozen=True)
class Steady:
    """Per newcomer the seconds from its join to its first proposal; the matcher's solves."""

    latencies: list[float]
    solves: int
    solve_seconds: float


async def steady(
    existing: Sequence[Synthetic], newcomers: Sequence[Synthetic], rate: float
) -> Steady:
    """Newcomers join at ``rate`` per second; seconds from each join to its first proposal."""
    preload = joined_messages(existing)
    messages = joined_messages(newcomers)
    sent: dict[str, float] = {}
    first: dict[str, float] = {}

    def note(at: float, key: str, _value: bytes) -> None:
        first.setdefault(key, at)

    async with running_broker() as broker:
        async with (
            service_running("matcher", broker.bootstrap) as matcher,
            httpx.AsyncClient(timeout=30) as client,
        ):
            sender = producer(broker.bootstrap)
            await sender.start()
            tap = Tap(broker.bootstrap, Topics.TANDEM_PROPOSED)
            tap.on_record = note
            try:
                await send_all(sender, Topics.CITY_JOINED, preload)
                await settle(client, matcher, None, len(existing), 0, timeout=120)
                await tap.start()
                acks = []
                started = time.monotonic()
                for k, (key, value) in enumerate(messages):
                    delay = started + k / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[key.decode()] = time.monotonic()
                    acks.append(await sender.send(Topics.CITY_JOINED, value, key=key))
                await asyncio.gather(*acks)
                await settle(
                    client, matcher, tap, len(existing) + len(messages), len(messages), 120
                )
                solves, solving = await solve_seconds(client, matcher.url)
            finally:
                await tap.stop()
                await sender.stop()
    missing = [k for k in sent if k not in first]
    if missing:
        raise RuntimeError(f"{len(missing)} newcomers got no proposal (capacity too small?)")
    return Steady([first[k] - sent[k] for k in sent], solves, solving)


async def run(
    events: int, existing_count: int, steady_joins: int, rate: float, repeat: int, budget: float
) -> dict[str, object]:
    """The pipeline figures: medians over up to ``repeat`` bursts (no new burst starts once
    ``budget`` seconds went to bursts: one burst of 10,000 joins may take minutes), and the
    latency of one steady run."""
    existing = generate(existing_count, newcomers=False, prefix="mentor")
    newcomers = generate(events, newcomers=True, prefix="newcomer")
    runs: list[BurstRun] = []
    started = time.monotonic()
    while len(runs) < repeat and (not runs or time.monotonic() - started < budget):
        runs.append(await burst(existing, newcomers))
    seconds = median([r.seconds for r in runs])
    broker_seconds = median([r.broker_seconds for r in runs])
    calm = await steady(existing, newcomers[:steady_joins], rate)
    latencies = calm.latencies
    return {
        "events": events,
        "existing_members": existing_count,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "broker_seconds": broker_seconds,
        "broker_events_per_s": events / broker_seconds,
        "ratio": median([r.broker_seconds / r.seconds for r in runs]),
        "proposals_published": median([r.proposals_published for r in runs]),
        "solves": median([r.solves for r in runs]),
        "runs": len(runs),
        "steady_rate_per_s": rate,
        "steady_joins": len(latencies),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "steady_solves": calm.solves,
        "steady_solve_mean_ms": calm.solve_seconds / max(1, calm.solves) * 1000,
        "matcher_rss_mb": max(r.matcher_rss_mb for r in runs),
    }
