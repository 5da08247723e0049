"""Load from ``wrk`` (C, one event loop per thread): ``POST /api/members`` with a different
member per request, as the registry bench drives it when ``wrk`` is on the PATH.

A load generator in the bench's own Python process shares the CPUs with the server and adds
its own scheduling delay to every latency it measures; wrk costs a fraction of that. The
script (``post_members.lua``) posts the registrations of a bodies file (one JSON per line,
:func:`write_bodies`), counts every answer that is not a 201 as a failure, notes the time of
each 201 (``CLOCK_MONOTONIC``, the clock of :func:`time.monotonic`) for the event delay and
prints wrk's exact latency percentiles as one JSON line (:func:`parse_output`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.bench.synthetic import Synthetic

SCRIPT = Path(__file__).with_name("post_members.lua")
#: The line the script's ``done()`` prints before its JSON.
MARKER = "TANDEM-WRK "
#: ``TANDEM_BENCH_LOAD=httpx`` makes the bench use its Python clients even with wrk installed.
LOAD_ENV = "TANDEM_BENCH_LOAD"
#: A request slower than this is a time-out for wrk, left out of its latencies: far above any
#: latency the bench may see, so that no slow answer is silently dropped.
TIMEOUT_SECONDS = 30


def executable() -> str | None:
    """The ``wrk`` to use: on the PATH and not switched off by ``TANDEM_BENCH_LOAD=httpx``."""
    if os.environ.get(LOAD_ENV, "").strip().lower() == "httpx":
        return None
    return shutil.which("wrk")


def write_bodies(members: Iterable[Synthetic], path: Path) -> int:
    """The registration of every member as one compact JSON line; how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for member in members:
            out.write(json.dumps(member.registration(), separators=(",", ":"), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: counts, seconds and latencies (seconds) as the script reports them."""

    requests: int
    seconds: float
    failures: int
    statuses: dict[str, int]
    errors: dict[str, int]
    reused: int
    latency: dict[str, float]
    answered: dict[str, float] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        """201s per second: an answer other than 201 does not count as throughput."""
        return (self.requests - self.failures) / self.seconds if self.seconds > 0 else 0.0

    @property
    def all_failures(self) -> int:
        """Answers other than 201, plus requests without an answer (socket errors and
        time-outs; a non-2xx status is in both ``failures`` and wrk's ``status`` errors)."""
        e = self.errors
        return self.failures + e["connect"] + e["read"] + e["write"] + e["timeout"]


def parse_output(stdout: str) -> WrkResult:
    """The result from wrk's standard output (the ``TANDEM-WRK`` line; the rest is wrk's own
    report). Raises ``ValueError`` without that line (wrk or the script failed)."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER) :])
            break
    else:
        raise ValueError(f"no {MARKER.strip()} line in wrk's output: {stdout[-2000:]!r}")
    latency = {key: float(value) / 1e6 for key, value in data["latency_us"].items()}
    return WrkResult(
        requests=int(data["requests"]),
        seconds=float(data["duration_us"]) / 1e6,
        failures=int(data["failures"]),
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        errors={str(k): int(v) for k, v in data["errors"].items()},
        reused=int(data["reused"]),
        latency=latency,
    )


def parse_answers(text: str) -> dict[str, float]:
    """``id seconds`` lines (the time of each 201) as a dict; the first time of an id counts."""
    answered: dict[str, float] = {}
    for line in text.splitlines():
        member_id, _, at = line.strip().partition(" ")
        if member_id and at:
            answered.setdefault(member_id, float(at))
    return answered


def command(
    wrk: str, url: str, bodies: Path, answers: Path, token: str, *, seconds: float,
    connections: int, threads: int,
) -> list[str]:  # fmt: skip
    """The wrk command line (``--`` and the script's arguments at the end)."""
    return [
        wrk, "-c", str(connections), "-t", str(threads), "-d", f"{max(1, round(seconds))}s",
        "--timeout", f"{TIMEOUT_SECONDS}s", "--latency", "-s", str(SCRIPT), url,
        "--", str(bodies), str(threads), token, str(answers),
    ]  # fmt: skip


async def post_members(
    wrk: str, url: str, bodies: Path, token: str, *, seconds: float, connections: int,
    threads: int,
) -> WrkResult:  # fmt: skip
    """Run wrk against ``url`` for ``seconds`` with the bodies file; the result with the time
    of every 201 by member id."""
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="tandem-bench-wrk-") as work:
        answers = Path(work) / "answers.txt"
        process = await asyncio.create_subprocess_exec(
            *command(wrk, url, bodies, answers, token, seconds=seconds,
                     connections=connections, threads=threads),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"wrk exited with {process.returncode}: {err.decode()[-2000:]}")
        result = parse_output(out.decode())
        text = answers.read_text() if answers.exists() else ""
    return WrkResult(**{**result.__dict__, "answered": parse_answers(text)})
