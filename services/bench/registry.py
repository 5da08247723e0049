"""The registry's HTTP edge: ``POST /api/members`` with the outbox, many concurrent clients.

``tandem registry --broker ...`` runs in its own process on SQLite (its default) against a
fresh embedded broker; the bench process is the clients (httpx, one connection each) and reads
``city.joined`` to see when each member's event is on the broker. The event delay is counted
from the 201 response to the record's arrival at a consumer (0 when it arrived first: the relay
publishes right after the commit, before the response may have been read).

Each run first measures the bare stack (``services.bench.reference``: FastAPI, pydantic, one
SQLite writer connection, under uvicorn in its own process) with the same members and clients,
then the registry: ``ratio`` is the registry's throughput over the reference's of the same run,
the figure that survives a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from services.bench.harness import (
    PLATFORM_TOKEN,
    Tap,
    free_port,
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


@contextlib.asynccontextmanager
async def reference_running(timeout: float = 60) -> AsyncIterator[str]:
    """The bare reference app in its own process on a fresh SQLite file; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="tandem-bench-reference-") as data:
        port = free_port()
        log = Path(data) / "reference.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.bench.reference", "--port", str(port),
                "--database", str(Path(data) / "reference.db"),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            async with httpx.AsyncClient(timeout=5) as client:
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"reference exited: {log.read_text()[-2000:]}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/health")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"reference not ready in {timeout} s")
                    await asyncio.sleep(0.1)
            yield url
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def reference_run(requests: int, clients: int, run: int) -> dict[str, Any]:
    """The bare stack under the registry's load: ``WARM_UP`` requests, then ``requests``."""
    members = generate(WARM_UP + requests, newcomers=False, prefix=f"registry-run{run}")
    async with reference_running() as url:
        await _post_all(url, members[:WARM_UP], clients)
        seconds, latencies, _answered, failures = await _post_all(url, members[WARM_UP:], clients)
    return {"seconds": seconds, "latencies": latencies, "failures": failures}


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
    references, runs = [], []
    for k in range(repeat):
        references.append(await reference_run(requests, clients, k))
        runs.append(await one_run(requests, clients, k))
    return {
        "requests": requests,
        "clients": clients,
        "requests_per_s": median([requests / r["seconds"] for r in runs]),
        "p50_ms": median([percentile(r["latencies"], 0.50) for r in runs]) * 1000,
        "p99_ms": median([percentile(r["latencies"], 0.99) for r in runs]) * 1000,
        "reference_requests_per_s": median([requests / r["seconds"] for r in references]),
        "reference_p99_ms": median([percentile(r["latencies"], 0.99) for r in references]) * 1000,
        "ratio": median(
            [ref["seconds"] / r["seconds"] for ref, r in zip(references, runs, strict=True)]
        ),
        "reference_failures": sum(r["failures"] for r in references),
        "event_delay_p50_ms": median([percentile(r["delays"], 0.50) for r in runs]) * 1000,
        "event_delay_p99_ms": median([percentile(r["delays"], 0.99) for r in runs]) * 1000,
        "failures": sum(r["failures"] for r in runs),
        "missing_events": sum(r["missing_events"] for r in runs),
        "database": "sqlite",
        "runs": repeat,
    }
