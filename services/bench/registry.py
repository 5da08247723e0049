"""The registry's HTTP edge: ``POST /api/members`` with the outbox, many concurrent clients.

``tandem registry --broker ...`` runs in its own process on SQLite (its default) against a
fresh embedded broker; the bench process is the clients (httpx, one connection each) and reads
``city.joined`` to see when each member's event is on the broker. The event delay is counted
from the 201 response to the record's arrival at a consumer (0 when it arrived first: the relay
publishes right after the commit, before the response may have been read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from services.bench.harness import (
    PLATFORM_TOKEN,
    Tap,
    median,
    percentile,
    running_broker,
    service_running,
)
from services.bench.synthetic import Synthetic, generate

WARM_UP = 50


async def _post_all(
    url: str, members: Sequence[Synthetic], clients: int
) -> tuple[float, list[float], dict[str, float], int]:
    """POST every member with ``clients`` concurrent clients; wall seconds, per-request seconds,
    response time by member id, and how many were not 201."""
    queue: asyncio.Queue[Synthetic] = asyncio.Queue()
    for member in members:
        queue.put_nowait(member)
    latencies: list[float] = []
    answered: dict[str, float] = {}
    failures = 0
    headers = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}

    async def client() -> None:
        nonlocal failures
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while not queue.empty():
                member = queue.get_nowait()
                started = time.monotonic()
                response = await http.post("/api/members", json=member.registration())
                done = time.monotonic()
                if response.status_code != 201:
                    failures += 1
                    continue
                latencies.append(done - started)
                answered[member.id] = done

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.monotonic() - started, latencies, answered, failures


async def one_run(requests: int, clients: int, run: int) -> dict[str, Any]:
    """A fresh broker and registry; ``WARM_UP`` requests, then ``requests`` measured ones."""
    members = generate(WARM_UP + requests, newcomers=False, prefix=f"registry-run{run}")
    arrived: dict[str, float] = {}

    def note(at: float, key: str, _value: bytes) -> None:
        arrived.setdefault(key, at)

    async with running_broker() as broker, service_running("registry", broker.bootstrap) as app:
        tap = Tap(broker.bootstrap, "city.joined")
        tap.on_record = note
        await tap.start()
        try:
            await _post_all(app.url, members[:WARM_UP], clients)
            seconds, latencies, answered, failures = await _post_all(
                app.url, members[WARM_UP:], clients
            )
            for _ in range(1200):  # at most a minute for the last events
                if all(k in arrived for k in answered):
                    break
                await asyncio.sleep(0.05)
        finally:
            await tap.stop()
    delays = [max(0.0, arrived[k] - t) for k, t in answered.items() if k in arrived]
    return {
        "seconds": seconds,
        "latencies": latencies,
        "delays": delays,
        "failures": failures,
        "missing_events": len(answered) - len(delays),
    }


async def run(requests: int, clients: int, repeat: int) -> dict[str, Any]:
    """Medians over ``repeat`` runs, each on a fresh registry database."""
    runs = [await one_run(requests, clients, k) for k in range(repeat)]
    return {
        "requests": requests,
        "clients": clients,
        "requests_per_s": median([requests / r["seconds"] for r in runs]),
        "p50_ms": median([percentile(r["latencies"], 0.50) for r in runs]) * 1000,
        "p99_ms": median([percentile(r["latencies"], 0.99) for r in runs]) * 1000,
        "event_delay_p50_ms": median([percentile(r["delays"], 0.50) for r in runs]) * 1000,
        "event_delay_p99_ms": median([percentile(r["delays"], 0.99) for r in runs]) * 1000,
        "failures": sum(r["failures"] for r in runs),
        "missing_events": sum(r["missing_events"] for r in runs),
        "database": "sqlite",
        "runs": repeat,
    }
