"""The registry bench's wrk load: the bodies it posts, the command line, reading wrk's output
and the report's rows (no wrk needed), and the Lua script against a small HTTP server when wrk
is installed."""

from __future__ import annotations

import gc
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from schemas.member import MemberRegistration
from services.bench import wrk
from services.bench.report import check_targets, table
from services.bench.synthetic import generate
from services.registry.admission import check
from services.runtime import (
    GC_MIDDLE_THRESHOLD,
    GC_OLD_THRESHOLD,
    GC_YOUNG_THRESHOLD,
    settle_garbage_collector,
)

#: The last lines of a real run (wrk 4.1.0, against the bare reference app).
OUTPUT = """Running 4s test @ http://127.0.0.1:18431
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    85.02ms   39.10ms 303.56ms   90.12%
  2596 requests in 4.10s, 375.21KB read
Requests/sec:    633.01
Transfer/sec:     91.49KB
TANDEM-WRK {"requests": 2596, "duration_us": 4101047, "failures": 3, "reused": 0, \
"statuses": {"409": 2, "500": 1}, "errors": {"connect": 0, "read": 1, "write": 0, "status": 3, \
"timeout": 2}, "latency_us": {"min": 39502, "mean": 85023.8, "max": 303559, "p50": 70481, \
"p90": 127690, "p99": 293705, "p99.9": 303038}}
"""


def test_bodies_are_one_valid_admissible_member_per_line_each_with_its_own_id(
    tmp_path: Path,
) -> None:
    members = generate(40, newcomers=False, prefix="registry-run0")
    path = tmp_path / "bodies.jsonl"

    assert wrk.write_bodies(members, path) == 40
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40
    bodies = [json.loads(line) for line in lines]
    assert [b["id"] for b in bodies] == [m.id for m in members]
    assert len({b["id"] for b in bodies}) == 40
    for body, member in zip(bodies, members, strict=True):
        assert body == member.registration()
        check(MemberRegistration.model_validate(body))  # raises if a rule is broken
    # Compact, and the script's id pattern finds the id as the first field.
    assert lines[0].startswith('{"id":"registry-run0-000000",')


def test_the_command_passes_the_scripts_arguments_in_the_order_its_init_reads_them() -> None:
    line = wrk.command(
        "/usr/bin/wrk", "http://127.0.0.1:8001", Path("/tmp/b.jsonl"), Path("/tmp/a.txt"),
        "token", seconds=4.6, connections=50, threads=2,
    )  # fmt: skip

    assert line[0] == "/usr/bin/wrk"
    assert line[line.index("-c") + 1] == "50" and line[line.index("-t") + 1] == "2"
    assert line[line.index("-d") + 1] == "5s"
    assert line[line.index("--timeout") + 1] == f"{wrk.TIMEOUT_SECONDS}s"
    assert "--latency" in line and line[line.index("-s") + 1] == str(wrk.SCRIPT)
    separator = line.index("--")
    assert line[separator - 1] == "http://127.0.0.1:8001"
    assert line[separator + 1 :] == ["/tmp/b.jsonl", "2", "token", "/tmp/a.txt"]
    script = wrk.SCRIPT.read_text()
    assert "args[1], tonumber(args[2]), args[3]" in script and "args[4]" in script


def test_output_gives_exact_percentiles_throughput_and_every_failure() -> None:
    result = wrk.parse_output(OUTPUT)

    assert result.requests == 2596
    assert result.seconds == pytest.approx(4.101047)
    assert result.requests_per_s == pytest.approx((2596 - 3) / 4.101047)  # 201s only
    assert result.latency["p50"] == pytest.approx(0.070481)
    assert result.latency["p99"] == pytest.approx(0.293705)
    assert result.latency["max"] == pytest.approx(0.303559)
    assert result.statuses == {"409": 2, "500": 1}
    # Three answers other than 201, one read error and two time-outs; wrk's own "status"
    # errors are the same three answers and are not counted twice.
    assert result.failures == 3
    assert result.all_failures == 6


def test_output_without_the_scripts_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="TANDEM-WRK"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_answers_map_each_id_to_the_time_of_its_first_201() -> None:
    answered = wrk.parse_answers("a-1 10.500000\nb-2 11.25\n\na-1 12.0\nbroken\n")

    assert answered == {"a-1": 10.5, "b-2": 11.25}


def test_httpx_replaces_wrk_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wrk.LOAD_ENV, "httpx")
    assert wrk.executable() is None
    monkeypatch.delenv(wrk.LOAD_ENV)
    assert wrk.executable() == shutil.which("wrk")


def _results(registry: dict[str, Any]) -> dict[str, Any]:
    machine = {"cpus": 2, "cpu_model": "test", "memory_gb": 1.0, "python": "3.11",
               "load_start": 0.0, "load_end": 0.0}  # fmt: skip
    results = {"registry": registry, "machine": machine, "repeat": 1, "seconds": 1.0}
    results["targets"] = check_targets(results)
    return results


def _text(results: dict[str, Any]) -> str:
    console = Console(width=200, record=True)
    console.print(table(results))
    return console.export_text()


REGISTRY = {
    "requests": 2100, "clients": 50, "seconds": 5.0, "requests_per_s": 420.0, "p50_ms": 110.0,
    "p99_ms": 150.0, "reference_requests_per_s": 520.0, "reference_p99_ms": 400.0,
    "ratio": 0.81, "reference_failures": 0, "event_delay_p50_ms": 90.0,
    "event_delay_p99_ms": 200.0, "failures": 0, "missing_events": 0, "load_generator": "wrk",
}  # fmt: skip


def test_the_report_names_the_load_generator_and_shows_failures_only_if_any() -> None:
    text = _text(_results(REGISTRY))
    assert "wrk 50 connections 5 s, 2,100 requests" in text
    assert "other than 201" not in text

    text = _text(_results({**REGISTRY, "load_generator": "httpx", "failures": 7}))
    assert "50 httpx clients, 2,100 requests" in text
    assert "other than 201" in text and "7 / 0" in text


def test_settling_the_garbage_collector_freezes_start_up_and_raises_its_thresholds() -> None:
    threshold = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == threshold
        settle_garbage_collector(GC_YOUNG_THRESHOLD)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        gc.set_threshold(*threshold)
        settle_garbage_collector(  # a process with the matcher
            middle_threshold=GC_MIDDLE_THRESHOLD, old_threshold=GC_OLD_THRESHOLD
        )
        assert gc.get_threshold() == (threshold[0], GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class _Register(BaseHTTPRequestHandler):
    """201 with the id, or 409 for ids in ``refused``."""

    refused: frozenset[str] = frozenset()
    seen: list[str]
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer secret"
        self.seen.append(body["id"])
        status = 409 if body["id"] in self.refused else 201
        answer = json.dumps({"id": body["id"], "name": body["name"]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Register]]]:
    handler = type("Handler", (_Register,), {"seen": [], "refused": frozenset({"m-000001"})})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_the_script_posts_new_ids_counts_failures_and_notes_every_201(
    tmp_path: Path, server: tuple[str, type[_Register]]
) -> None:
    url, handler = server
    bodies = tmp_path / "bodies.jsonl"
    wrk.write_bodies(generate(5, newcomers=False, prefix="m"), bodies)
    executable = shutil.which("wrk")
    assert executable is not None

    result = await wrk.post_members(
        executable, url, bodies, "secret", seconds=1, connections=4, threads=2
    )

    # Five bodies are far fewer than a second's requests: the threads post them again under
    # new ids ("-1", "-2", ...), so no id is posted twice.
    assert result.requests > 10 and result.reused > 0
    assert len(handler.seen) == len(set(handler.seen))
    assert "m-000001" in handler.seen and "m-000002-1" in handler.seen
    # Exactly the one refused id is a failure.
    assert result.statuses == {"409": 1} and result.failures == 1
    # Every 201 is noted with its id; at the end up to one answer per connection is still in
    # flight (seen by the server, not counted by wrk).
    answered = set(result.answered)
    assert answered <= set(handler.seen) - {"m-000001"}
    assert len(handler.seen) - 1 - len(answered) <= 4
    assert result.requests == len(answered) + 1
    assert 0 < result.latency["p50"] <= result.latency["p99"] <= result.latency["max"]
