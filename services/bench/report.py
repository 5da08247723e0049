"""The targets of the performance issue, and the one table ``tandem bench`` prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class Target:
    """A limit one figure of the results must keep."""

    name: str
    limit: float
    upper: bool  # True: the value must stay below the limit; False: reach at least the limit
    unit: str
    value: Callable[[dict[str, Any]], float | None]
    text: str
    inclusive: bool = False  # an upper limit the value may equal

    def check(self, results: dict[str, Any]) -> dict[str, Any] | None:
        try:
            value = self.value(results)
        except KeyError:  # that part was not run (tandem bench --only)
            return None
        if value is None:
            return None
        if self.upper:
            met = value <= self.limit if self.inclusive else value < self.limit
        else:
            met = value >= self.limit
        return {
            "figure": self.name,
            "value": value,
            "target": self.text,
            "met": met,
            "missed_by": None if met else missed_by(value, self.limit, self.upper, self.unit),
        }


def missed_by(value: float, limit: float, upper: bool, unit: str) -> str:
    """How far a value is from its limit, absolute and relative."""
    gap = value - limit if upper else limit - value
    if upper:
        factor = f"{value / limit:.1f}x the limit" if limit else ""
    else:
        factor = f"{limit / value:.1f}x short" if value > 0 else "nothing measured"
    return f"{fmt(gap, unit)} ({factor})"


def fmt(value: float, unit: str) -> str:
    """A figure with its unit, with sensible precision."""
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "%":
        return f"{value * 100:.1f} %"
    if unit == "x":
        return f"{value:.1f}x"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f"{value:,.0f} {unit}".strip()


def _size(results: dict[str, Any], n: int, m: int, key: str) -> float | None:
    for row in results.get("assignment", []):
        if (row["newcomers"], row["mentors"]) == (n, m):
            return float(row[key])
    return None


TARGETS = (
    Target("assignment 25 x 120", 0.005, True, "s",
           lambda r: _size(r, 25, 120, "seconds"), "< 5 ms"),
    Target("assignment 2,000 x 10,000", 2.0, True, "s",
           lambda r: _size(r, 2000, 10000, "seconds"), "< 2 s"),
    Target("assignment 2,000 x 10,000 / LSA alone", 3.0, True, "x",
           lambda r: _size(r, 2000, 10000, "ratio_to_lsa"), "<= 3x", inclusive=True),
    Target("incremental: one join", 50.0, True, "ms",
           lambda r: r["incremental"]["join_plan_ms"], "< 50 ms"),
    Target("incremental: one join / full re-plan", 0.10, True, "%",
           lambda r: r["incremental"]["ratio"], "<= 10 %", inclusive=True),
    Target("pipeline throughput / bare broker", 0.25, False, "%",
           lambda r: r["pipeline"]["ratio"], ">= 25 %"),
    Target("pipeline latency p99 at 50 joins/s", 250.0, True, "ms",
           lambda r: r["pipeline"]["p99_ms"], "< 250 ms"),
    Target("registry requests/s", 300.0, False, "req/s",
           lambda r: r["registry"]["requests_per_s"], ">= 300/s"),
    Target("registry / bare stack", 0.5, False, "%",
           lambda r: r["registry"]["ratio"], ">= 50 %"),
    Target("registry p99", 100.0, True, "ms",
           lambda r: r["registry"]["p99_ms"], "< 100 ms"),
    Target("matcher peak RSS", 300.0, True, "MB",
           lambda r: r["memory"]["matcher_rss_mb"], "< 300 MB"),
    Target("matcher peak RSS during the burst", 500.0, True, "MB",
           lambda r: r["pipeline"]["matcher_rss_mb"], "< 500 MB"),
)  # fmt: skip


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target that the results have a figure for, met or missed by how much."""
    return [c for c in (t.check(results) for t in TARGETS) if c is not None]


def _verdict(check: dict[str, Any] | None) -> str:
    if check is None:
        return ""
    return "met" if check["met"] else f"missed by {check['missed_by']}"


def table(results: dict[str, Any]) -> Table:
    """The one table: each figure, its reference from the same run, target, met or missed."""
    checks = {c["figure"]: c for c in results.get("targets", [])}
    out = Table(title="tandem bench", title_justify="left")
    for column in ("figure", "measured", "reference (same run)", "target", "met?"):
        out.add_column(column, overflow="fold")

    def row(figure: str, measured: str, reference: str = "", key: str | None = None) -> None:
        check = checks.get(key or figure)
        out.add_row(figure, measured, reference, check["target"] if check else "", _verdict(check))

    _solver_rows(results, checks, row)
    if "incremental" in results:
        n = results["incremental"]
        row(f"incremental: one join into {n['members']:,} members, {n['waiting']:,} waiting",
            fmt(n["join_plan_ms"], "ms"), f"full re-plan {fmt(n['full_plan_ms'], 'ms')}",
            key="incremental: one join")  # fmt: skip
        row("incremental: one join / full re-plan", fmt(n["ratio"], "%"),
            "same optimum" if n["same_optimum"] else "DIFFERENT OPTIMUM")  # fmt: skip
    if "pipeline" in results:
        p = results["pipeline"]
        row(f"pipeline: {p['events']:,} joins vs {p['existing_members']:,} members",
            f"{p['events_per_s']:,.0f} events/s ({fmt(p['seconds'], 's')})",
            f"bare broker {p['broker_events_per_s']:,.0f} events/s", key="")  # fmt: skip
        row("pipeline throughput / bare broker", fmt(p["ratio"], "%"))
        row(f"pipeline latency at {p['steady_rate_per_s']:.0f} joins/s ({p['steady_joins']} joins)",
            f"p50 {fmt(p['p50_ms'], 'ms')}, p99 {fmt(p['p99_ms'], 'ms')}",
            key="pipeline latency p99 at 50 joins/s")  # fmt: skip
    if "registry" in results:
        g = results["registry"]
        row(f"registry POST /api/members, {_load(g)}, {g['requests']:,} requests",
            f"{g['requests_per_s']:,.0f} req/s",
            f"bare FastAPI + SQLite {g['reference_requests_per_s']:,.0f} req/s",
            key="registry requests/s")  # fmt: skip
        row("registry / bare stack", fmt(g["ratio"], "%"))
        row("registry latency", f"p50 {fmt(g['p50_ms'], 'ms')}, p99 {fmt(g['p99_ms'], 'ms')}",
            f"bare stack p99 {fmt(g['reference_p99_ms'], 'ms')}",
            key="registry p99")  # fmt: skip
        row(
            "registry: 201 until the event is on the broker",
            f"p50 {fmt(g['event_delay_p50_ms'], 'ms')}, p99 {fmt(g['event_delay_p99_ms'], 'ms')}",
        )
        failures = g["failures"] + g.get("reference_failures", 0)
        if failures or g.get("missing_events"):
            row("registry: answers other than 201 / events missing",
                f"{g['failures']:,} / {g.get('missing_events', 0):,}",
                f"bare stack {g.get('reference_failures', 0):,} not 201")  # fmt: skip
    if "memory" in results:
        m = results["memory"]
        row(f"matcher peak RSS, {m['members']:,} members ({m['newcomers']:,} newcomers)",
            fmt(m["matcher_rss_mb"], "MB"), f"idle {fmt(m['matcher_idle_rss_mb'], 'MB')}",
            key="matcher peak RSS")  # fmt: skip
    if "pipeline" in results:
        p = results["pipeline"]
        row("matcher peak RSS during the pipeline burst", fmt(p["matcher_rss_mb"], "MB"),
            f"{p['existing_members'] + p['events']:,} members",
            key="matcher peak RSS during the burst")  # fmt: skip
    out.caption = _caption(results)
    out.caption_justify = "left"
    return out


def _load(registry: dict[str, Any]) -> str:
    """Who made the registry's load: wrk's connections for a time, or httpx clients."""
    if registry.get("load_generator") == "wrk":
        return f"wrk {registry['clients']} connections {registry['seconds']:g} s"
    return f"{registry['clients']} httpx clients"


def _caption(results: dict[str, Any]) -> str:
    """The machine, the load and how many runs each figure is the median of."""
    machine = results["machine"]
    counts = [f"Medians of {results['repeat']} runs"]
    if "assignment" in results or "baselines" in results:
        counts.append(f"{5 * results['repeat']} for assignments under 1M pairs and the baselines")
    if "baselines" in results or "memory" in results:
        counts.append("one for networkx and memory")
    if "pipeline" in results:
        counts.append(f"{results['pipeline']['runs']} for the pipeline burst")
    detail = f"{counts[0]} ({', '.join(counts[1:])})" if len(counts) > 1 else counts[0]
    return (
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']:.0f} GB, "
        f"Python {machine['python']}; load average {machine['load_start']:.1f} at start, "
        f"{machine['load_end']:.1f} at end. {detail}; {results['seconds']:.0f} s in all."
    )


def _solver_rows(results: dict[str, Any], checks: dict[str, Any], row: Callable[..., None]) -> None:
    """The assignment sizes and the baselines."""
    for a in results.get("assignment", []):
        name = f"assignment {a['newcomers']:,} x {a['mentors']:,}"
        row(f"{name}: full re-solve", fmt(a["seconds"], "s"),
            f"LSA alone {fmt(a['lsa_only_seconds'], 's')}", key=name)  # fmt: skip
        if f"{name} / LSA alone" in checks:
            row(f"{name}: re-solve / LSA alone", fmt(a["ratio_to_lsa"], "x"),
                key=f"{name} / LSA alone")  # fmt: skip
        if "solver_seconds" in a and a["newcomers"] * a["mentors"] >= 1_000_000:
            row(f"{name}: solver alone (same matrix)",
                f"{fmt(a['solver_seconds'], 's')} = {fmt(a['solver_ratio_to_lsa'], 'x')} LSA",
                key="")  # fmt: skip
    if "baselines" in results:
        b = results["baselines"]
        size = f"{b['newcomers']:,} x {b['mentors']:,}"
        for name, label in (("ours", "ours (solver)"), ("networkx", "networkx max_weight_matching"),
                            ("greedy", "arrival-order greedy")):  # fmt: skip
            row(f"baseline {size}: {label}",
                f"{fmt(b[f'{name}_seconds'], 's')}, total {b[f'{name}_total']:.3f}",
                f"{b[f'{name}_matched']} matched")  # fmt: skip
