"""``tandem up`` as a subprocess, driven over HTTP, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PLATFORM, STAFF, TOKENS, member_body
from tests.e2e.conftest import tandem_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: object, what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()  # type: ignore[operator]
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_up_serves_the_whole_path_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TANDEM_API_TOKENS": TOKENS}
    process = subprocess.Popen(
        [*tandem_command(), "up", "--port", str(port), "--data", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, "/ready")
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        assert httpx.get(f"{base}/api/proposals").status_code == 401
        platform = {"Authorization": f"Bearer {PLATFORM}"}
        staff = {"Authorization": f"Bearer {STAFF}"}
        assert httpx.get(f"{base}/api/proposals", headers=platform).status_code == 403
        for body in (
            member_body("ammerbuch", "2015-01-01"),
            member_body("goeppingen", "2024-03-01", seeks_tandem=True),
        ):
            response = httpx.post(f"{base}/api/members", json=body, headers=platform)
            assert response.status_code == 201, response.text
        duplicate = httpx.post(
            f"{base}/api/members", json=member_body("ammerbuch", "2015-01-01"), headers=platform
        )
        assert duplicate.status_code == 409
        invalid = httpx.post(
            f"{base}/api/members",
            json=member_body("kleinstadt", "2024-01-01", population=500),
            headers=platform,
        )
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "population"]

        def proposal() -> dict[str, object] | None:
            items = httpx.get(
                f"{base}/api/proposals", params={"status": "pending"}, headers=staff
            ).json()["items"]
            return items[0] if items else None

        found = wait_until(proposal, "a pending proposal", timeout=20)
        assert isinstance(found, dict) and found["newcomer_id"] == "goeppingen"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert re.search(rf"listening on .*{port}", output), output


@pytest.mark.slow
def test_up_generates_tokens_when_none_are_configured(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TANDEM_API_TOKENS"}
    process = subprocess.Popen(
        [*tandem_command(), "up", "--port", str(port), "--data", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, "up")
        text = (tmp_path / "tokens").read_text()
        staff = re.search(r"staff:([^,\s]+)", text)
        assert staff is not None
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/proposals",
            headers={"Authorization": f"Bearer {staff.group(1)}"},
        )
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert staff.group(1) in output  # printed for the operator


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("TANDEM_LOG_LEVEL", "LOUD", "TANDEM_LOG_LEVEL"),
        ("TANDEM_API_TOKENS", "platform:sh0rt", "TANDEM_API_TOKENS"),
        ("TANDEM_WEIGHTS", "topics=-1", "TANDEM_WEIGHTS"),
    ],
)
def test_up_refuses_a_bad_setting_in_one_line_without_echoing_it(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    """A bad option is exit 2 with the variable named, not a traceback; the value (a token,
    a password) is never repeated."""
    env = {**os.environ, variable: value}
    env.pop("TANDEM_BROKER", None)
    result = subprocess.run(
        [*tandem_command(), "up", "--port", str(free_port()), "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"invalid configuration: {named}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sh0rt" not in result.stderr + result.stdout


async def test_a_restart_on_a_fresh_embedded_broker_misses_no_member(tmp_path: Path) -> None:
    """The embedded broker keeps nothing across a restart, the databases keep everything: a
    member whose city.joined reached the old broker but not the matcher (here: the matcher's
    database lost) reaches the matcher after the restart, because the start republishes."""
    from pydantic import SecretStr

    from services.infra.settings import CommonSettings
    from services.runtime import Node
    from tests.helpers import eventually

    settings = CommonSettings(data=tmp_path, port=0, api_tokens=SecretStr(TOKENS))
    ids = ["ammerbuch", "lemgo", "speyer"]

    async def matcher_knows(node: Node) -> bool:
        async with httpx.AsyncClient(
            base_url=node.url, headers={"Authorization": f"Bearer {STAFF}"}
        ) as staff:
            status = (await staff.get("/api/matcher/status")).json()
        return int(status["members"]) == len(ids)

    node = Node(settings)
    await node.start()
    try:
        async with httpx.AsyncClient(
            base_url=node.url, headers={"Authorization": f"Bearer {PLATFORM}"}
        ) as platform:
            for member_id in ids:
                body = member_body(member_id, "2016-01-01")
                assert (await platform.post("/api/members", json=body)).status_code == 201
        await eventually(lambda: matcher_knows(node), "the matcher to know every member")
    finally:
        await node.stop()
    for name in ("matcher.db", "matcher.db-wal", "matcher.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    node = Node(settings)
    await node.start()
    try:
        await eventually(lambda: matcher_knows(node), "the matcher to know them again", 60)
    finally:
        await node.stop()
