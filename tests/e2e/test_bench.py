"""``tandem bench``: every benchmark runs once at tiny sizes and reports every figure.

No time limits are asserted: a benchmark is a program, not a test with a deadline. The full
run is ``tandem bench`` (minutes); ``--quick`` is a smaller one; this smoke test uses the
in-process entry with tiny sizes to stay well under a minute.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from rich.console import Console

from services.bench import TINY, run_bench
from services.bench.report import table
from tests.e2e.conftest import tandem_command

KEYS = {
    "assignment": {"newcomers", "mentors", "seconds", "lsa_only_seconds", "solver_seconds"},
    "baselines": {
        "newcomers", "mentors", "ours_seconds", "ours_total", "networkx_seconds",
        "networkx_total", "greedy_seconds", "greedy_total",
    },
    "incremental": {"members", "waiting", "join_plan_ms", "full_plan_ms", "ratio"},
    "pipeline": {
        "events", "seconds", "events_per_s", "broker_events_per_s", "ratio", "p50_ms", "p99_ms",
    },
    "registry": {
        "requests", "requests_per_s", "p50_ms", "p99_ms", "event_delay_p99_ms",
        "reference_requests_per_s", "reference_p99_ms", "ratio",
    },
    "memory": {"members", "matcher_rss_mb"},
}  # fmt: skip
#: Figures that may legitimately be 0 at tiny sizes (an event may arrive before the response).
MAY_BE_ZERO = {("registry", "event_delay_p99_ms")}


@pytest.mark.slow
async def test_bench_reports_every_figure_as_a_positive_number() -> None:
    results = await run_bench(TINY, repeat=1)

    # JSON-ready, as `tandem bench --json` prints it.
    results = json.loads(json.dumps(results))
    for area, keys in KEYS.items():
        rows = results[area] if area == "assignment" else [results[area]]
        assert rows, area
        for row in rows:
            assert keys <= set(row), (area, keys - set(row))
            for key in keys:
                value = row[key]
                assert isinstance(value, int | float), (area, key, value)
                assert value > 0 or ((area, key) in MAY_BE_ZERO and value == 0), (area, key)
    assert results["machine"]["cpus"] >= 1
    assert results["baselines"]["ours_total"] >= results["baselines"]["greedy_total"] - 1e-9
    assert abs(results["baselines"]["ours_total"] - results["baselines"]["networkx_total"]) < 1e-6
    for check in results["targets"]:
        assert check["met"] or check["missed_by"], check

    console = Console(width=160, record=True)
    console.print(table(results))
    text = console.export_text()
    assert "pipeline throughput / bare broker" in text and "matcher peak RSS" in text
    assert "registry / bare stack" in text and "bare FastAPI + SQLite" in text


def test_bench_command_is_there() -> None:
    result = subprocess.run(
        [*tandem_command(), "bench", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in ("--json", "--quick", "--repeat", "--only"):
        assert option in result.stdout


def test_bench_only_runs_the_parts_asked_for() -> None:
    result = subprocess.run(
        [*tandem_command(), "bench", "--only", "nonsense"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "nonsense" in result.stderr and "assignment" in result.stderr


async def test_bench_part_alone_reports_its_figures_and_targets() -> None:
    results = await run_bench(TINY, repeat=1, only=["assignment"])
    assert set(results) >= {"assignment", "targets", "machine"}
    assert not {"baselines", "pipeline", "registry", "memory"} & set(results)
    row = results["assignment"][0]
    assert row["solver_seconds"] > 0 and row["solver_ratio_to_lsa"] > 0
    console = Console(width=160, record=True)
    console.print(table(results))
    assert "assignment 10 x 40" in console.export_text()


async def test_bench_incremental_plans_a_join_with_the_full_optimum() -> None:
    results = await run_bench(TINY, repeat=1, only=["incremental"])
    figures = results["incremental"]
    assert (figures["members"], figures["waiting"]) == TINY.incremental
    assert figures["same_optimum"] is True
    assert figures["incremental_plans"] == figures["joins"]  # every join repaired, none in full
    assert 0 < figures["join_plan_ms"] and 0 < figures["full_plan_ms"]
    assert {c["figure"] for c in results["targets"]} == {
        "incremental: one join",
        "incremental: one join / full re-plan",
    }
    console = Console(width=160, record=True)
    console.print(table(results))
    assert "incremental: one join into 200 members, 40 waiting" in console.export_text()
