"""``tandem bench``: the system measured side by side with its limits.

Every figure is the median of several runs in this one process run, next to its reference
measured in the same run (``linear_sum_assignment`` alone, the bare broker), so the ratio holds
on a noisy machine. Modules: ``synthetic`` (the deterministic network), ``assignment``,
``incremental``, ``pipeline``, ``registry``, ``memory`` (each one area), ``harness`` (broker,
service subprocesses, topic taps), ``report`` (targets and the table).

Set ``TANDEM_BENCH_PYSPY=DIR`` to record a py-spy profile of every service subprocess into DIR.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bench import assignment, incremental, memory, pipeline, registry
from services.bench.report import check_targets
from services.runtime import GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD, settle_garbage_collector

#: The parts of ``tandem bench``, in the order they run.
PARTS = ("assignment", "baselines", "incremental", "pipeline", "registry", "memory")


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is."""

    assignment: tuple[tuple[int, int], ...]
    baselines: tuple[int, int]
    incremental: tuple[int, int]  # (experienced members, waiting newcomers)
    events: int
    existing_members: int
    steady_joins: int
    steady_rate: float
    requests: int  # per registry run with httpx clients (without wrk)
    clients: int
    load_seconds: float  # per registry run with wrk
    memory_members: int
    burst_budget_s: float


FULL = Sizes(
    assignment=((25, 120), (200, 1_000), (2_000, 10_000)),
    baselines=(100, 500),
    incremental=(10_000, 2_000),
    events=10_000,
    existing_members=1_000,
    steady_joins=500,  # ten seconds at 50 joins/s
    steady_rate=50.0,
    requests=2_000,
    clients=50,
    load_seconds=5.0,
    memory_members=10_000,
    burst_budget_s=150.0,
)
QUICK = Sizes(
    assignment=((25, 120), (200, 1_000)),
    baselines=(30, 150),
    incremental=(2_000, 400),
    events=2_000,
    existing_members=1_000,
    steady_joins=250,
    steady_rate=50.0,
    requests=500,
    clients=50,
    load_seconds=3.0,
    memory_members=2_000,
    burst_budget_s=60.0,
)
#: For the smoke test: every path once, in well under a minute.
TINY = Sizes(
    assignment=((10, 40),),
    baselines=(8, 20),
    incremental=(200, 40),
    events=150,
    existing_members=200,
    steady_joins=25,
    steady_rate=50.0,
    requests=60,
    clients=10,
    load_seconds=1.0,
    memory_members=300,
    burst_budget_s=0.0,
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 1024 / 1024
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": cpus,
        "cpu_model": model or platform.processor() or platform.machine(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker": "embedded (Tansu)",
        "database": "SQLite",
    }


async def run_bench(
    sizes: Sizes,
    repeat: int,
    progress: Callable[[str], None] = lambda _: None,
    command: str = "tandem bench",
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Run the benchmarks (all, or the ``only`` parts of ``PARTS``); the results as one
    JSON-ready dict (with ``targets``)."""
    started = time.monotonic()
    info = machine()
    info["load_start"] = os.getloadavg()[0]
    parts = set(PARTS) if only is None else set(only)
    results: dict[str, Any] = {}
    # The in-process figures plan as the matcher's process does: with its garbage collector
    # settings (start-up frozen, middle and full collections rarer).
    client_thresholds = gc.get_threshold()
    settle_garbage_collector(middle_threshold=GC_MIDDLE_THRESHOLD, old_threshold=GC_OLD_THRESHOLD)
    if "assignment" in parts:
        results["assignment"] = []
        for newcomers, mentors in sizes.assignment:
            progress(f"assignment {newcomers:,} x {mentors:,}")
            results["assignment"].append(assignment.resolve_size(newcomers, mentors, repeat))
    if "baselines" in parts:
        progress(f"baselines {sizes.baselines[0]:,} x {sizes.baselines[1]:,} (networkx is slow)")
        results["baselines"] = assignment.baselines(*sizes.baselines, repeat)
    if "incremental" in parts:
        members, waiting = sizes.incremental
        progress(f"incremental: one join into {members:,} members with {waiting:,} waiting")
        results["incremental"] = incremental.run(members, waiting, repeat)
    # The system figures run the services in their own processes, and this one is their client
    # (producer, consumers, HTTP): with CPython's thresholds again, and what the in-process
    # figures left behind collected and frozen, so that no long collection of it falls into a
    # timed burst or a latency (full collections of this process took up to 0.14 s in one run,
    # gc callbacks).
    gc.set_threshold(*client_thresholds)
    settle_garbage_collector()
    if "pipeline" in parts:
        progress(
            f"pipeline: {sizes.events:,} joins vs {sizes.existing_members:,} members, then "
            f"{sizes.steady_joins} joins at {sizes.steady_rate:.0f}/s"
        )
        results["pipeline"] = await pipeline.run(
            sizes.events, sizes.existing_members, sizes.steady_joins, sizes.steady_rate, repeat,
            sizes.burst_budget_s,
        )  # fmt: skip
    if "registry" in parts:
        progress(registry.describe_load(sizes.requests, sizes.clients, sizes.load_seconds))
        results["registry"] = await registry.run(
            sizes.requests, sizes.clients, repeat, sizes.load_seconds
        )
    if "memory" in parts:
        progress(f"memory: matcher with {sizes.memory_members:,} members")
        results["memory"] = await memory.run(sizes.memory_members)
    info["load_end"] = os.getloadavg()[0]
    results["machine"] = info
    results["repeat"] = repeat
    results["seconds"] = time.monotonic() - started
    results["command"] = command
    results["targets"] = check_targets(results)
    return results
