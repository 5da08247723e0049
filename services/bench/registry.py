"""The registry's HTTP edge: ``POST /api/members`` with the outbox, 50 concurrent connections.

``tandem registry --broker ...`` runs in its own process on SQLite (its default) against a
fresh embedded broker. With ``wrk`` on the PATH (``services.bench.wrk``), wrk drives the load:
50 connections for a fixed time, a different valid member per request, every answer other than
a 201 counted as a failure; throughput and latency percentiles are wrk's. Without wrk (or with
``TANDEM_BENCH_LOAD=httpx``) the bench process is the clients (httpx, one connection each, a
fixed number of requests), which shares the CPUs with the server and adds its own delay to the
tail; ``load_generator`` says which one made the figures.

The event delay is counted from the 201 response to the record's arrival at a consumer in the
bench process (0 when it arrived first: the relay publishes right after the commit, before the
response may have been read); under wrk the script notes each 201's time on the same monotonic
clock, so the delay is measured under the same load (``event_delay_load_generator``).

Each run first measures the bare stack (``services.bench.reference``: FastAPI, pydantic, one
SQLite writer connection, under uvicorn in its own process) with the same members and the same
load, then the registry: ``ratio`` is the registry's throughput over the reference's of the
same run, the figure that survives a loaded machine.
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

from services.bench import wrk as wrk_load
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
#: wrk: seconds of warm-up before each measured run, and its threads (one event loop copes
#: with 50 connections at these rates and leaves the second CPU to the server).
WARM_UP_SECONDS = 1.0
WRK_THREADS = 1
#: wrk: members in a bodies file per second of load (more than the bare stack answers here;
#: a thread that runs out posts its members again under new ids, counted as ``reused``).
BODIES_PER_SECOND = 1500


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


async def run_httpx(requests: int, clients: int, repeat: int) -> dict[str, Any]:
    """With httpx clients in the bench process: medians over ``repeat`` runs, each on a fresh
    registry database; ``requests`` measured requests per run."""
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
        "load_generator": "httpx",
        "event_delay_load_generator": "httpx",
    }


def _bodies(folder: Path, name: str, count: int, prefix: str) -> Path:
    path = folder / f"{name}.jsonl"
    wrk_load.write_bodies(generate(count, newcomers=False, prefix=prefix), path)
    return path


async def _wrk_pass(
    wrk: str, url: str, warm_up: Path, bodies: Path, seconds: float, connections: int
) -> wrk_load.WrkResult:
    """A warm-up, then the measured wrk run (both with ``connections`` connections)."""
    await wrk_load.post_members(
        wrk, url, warm_up, PLATFORM_TOKEN, seconds=WARM_UP_SECONDS, connections=connections,
        threads=WRK_THREADS,
    )  # fmt: skip
    return await wrk_load.post_members(
        wrk, url, bodies, PLATFORM_TOKEN, seconds=seconds, connections=connections,
        threads=WRK_THREADS,
    )  # fmt: skip


async def wrk_run(
    wrk: str, seconds: float, connections: int, run: int
) -> tuple[wrk_load.WrkResult, wrk_load.WrkResult, list[float], int]:
    """The reference, then a fresh broker and registry, under the same wrk load with the same
    members (each on its own fresh database); the registry's event delays and how many of its
    201s had no ``city.joined`` on the broker within a minute."""
    arrived: dict[str, float] = {}

    def note(at: float, key: str, _value: bytes) -> None:
        arrived.setdefault(key, at)

    with tempfile.TemporaryDirectory(prefix="tandem-bench-bodies-") as folder:
        count = max(WARM_UP, round(WARM_UP_SECONDS * BODIES_PER_SECOND))
        warm_up = _bodies(Path(folder), "warm-up", count, f"registry-warm{run}")
        count = round(seconds * BODIES_PER_SECOND)
        bodies = _bodies(Path(folder), "bodies", count, f"registry-run{run}")
        async with reference_running() as url:
            reference = await _wrk_pass(wrk, url, warm_up, bodies, seconds, connections)
        async with running_broker() as broker, service_running("registry", broker.bootstrap) as app:
            tap = Tap(broker.bootstrap, "city.joined")
            tap.on_record = note
            await tap.start()
            try:
                result = await _wrk_pass(wrk, app.url, warm_up, bodies, seconds, connections)
                for _ in range(1200):  # at most a minute for the last events
                    if all(k in arrived for k in result.answered):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await tap.stop()
    answered = result.answered
    delays = [max(0.0, arrived[k] - t) for k, t in answered.items() if k in arrived]
    return reference, result, delays, len(answered) - len(delays)


async def run_wrk(wrk: str, seconds: float, clients: int, repeat: int) -> dict[str, Any]:
    """With wrk: medians over ``repeat`` runs of ``seconds`` each, reference first."""
    pairs = [await wrk_run(wrk, seconds, clients, k) for k in range(repeat)]
    references = [reference for reference, _, _, _ in pairs]
    runs = [result for _, result, _, _ in pairs]
    delays = [d for _, _, d, _ in pairs]
    return {
        "requests": round(median([r.requests for r in runs])),
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": median([r.requests_per_s for r in runs]),
        "p50_ms": median([r.latency["p50"] for r in runs]) * 1000,
        "p90_ms": median([r.latency["p90"] for r in runs]) * 1000,
        "p99_ms": median([r.latency["p99"] for r in runs]) * 1000,
        "max_ms": median([r.latency["max"] for r in runs]) * 1000,
        "reference_requests": round(median([r.requests for r in references])),
        "reference_requests_per_s": median([r.requests_per_s for r in references]),
        "reference_p50_ms": median([r.latency["p50"] for r in references]) * 1000,
        "reference_p99_ms": median([r.latency["p99"] for r in references]) * 1000,
        "ratio": median(
            [r.requests_per_s / ref.requests_per_s for ref, r in zip(references, runs, strict=True)]
        ),
        "reference_failures": sum(r.all_failures for r in references),
        "event_delay_p50_ms": median([percentile(d, 0.50) for d in delays]) * 1000,
        "event_delay_p99_ms": median([percentile(d, 0.99) for d in delays]) * 1000,
        "failures": sum(r.all_failures for r in runs),
        "failure_statuses": _merged([r.statuses for r in runs]),
        "reference_failure_statuses": _merged([r.statuses for r in references]),
        "reused_bodies": sum(r.reused for r in (*references, *runs)),
        "missing_events": sum(missing for _, _, _, missing in pairs),
        "database": "sqlite",
        "runs": repeat,
        "load_generator": "wrk",
        "wrk_threads": WRK_THREADS,
        "event_delay_load_generator": "wrk",
    }


def _merged(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            total[key] = total.get(key, 0) + n
    return total


async def run(requests: int, clients: int, repeat: int, seconds: float) -> dict[str, Any]:
    """wrk for ``seconds`` per run when it is installed, else ``requests`` per run from httpx
    clients in this process (``load_generator`` in the result says which)."""
    wrk = wrk_load.executable()
    if wrk is None:
        return await run_httpx(requests, clients, repeat)
    return await run_wrk(wrk, seconds, clients, repeat)


def describe_load(requests: int, clients: int, seconds: float) -> str:
    """What :func:`run` will do, for the bench's progress line."""
    if wrk_load.executable() is None:
        return (
            f"registry: {requests:,} POST /api/members per run, {clients} httpx clients "
            "(wrk not found)"
        )
    return f"registry: POST /api/members for {seconds:g} s per run, wrk with {clients} connections"
