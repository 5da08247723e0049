"""EmbeddedBroker: a real Tansu process, driven with aiokafka. No fixed sleeps: every wait polls an
observable condition against a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.infra.embedded_broker import BrokerStartError, EmbeddedBroker
from services.infra.kafka_probe import wait_for_kafka

REPO_ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


# -- helpers ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(0.01)


def process_gone(pid: int) -> bool:
    """True when no thread of process ``pid`` runs any more: it does not exist, or it is a
    zombie (dead, not yet reaped by its new parent - in a container that may be an init that
    never reaps). Every thread counts: a SIGKILLed multi-threaded process shows its leader as a
    zombie while other threads are still tearing down (and still hold its sockets)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return False
    return True


def process_group(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def is_tansu(pid: int) -> bool:
    try:
        return "tansu" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return False


def port_closed(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def producer_for(broker: EmbeddedBroker, **extra: object) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, enable_idempotence=False, acks="all", **extra
    )


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
async def async_broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as b:
        yield b


# -- tests ------------------------------------------------------------------------------------


async def test_produce_consume_commit_and_resume_in_group(async_broker: EmbeddedBroker) -> None:
    broker = async_broker
    topic, group = "embedded-broker-roundtrip", "embedded-broker-group"
    tp = TopicPartition(topic, 0)
    pid, port = broker.pid, broker.port
    assert pid is not None and port is not None
    assert broker.bootstrap == f"127.0.0.1:{port}"

    async with asyncio.timeout(20):
        producer = producer_for(broker)
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait(topic, f"m{i}".encode(), partition=0)
        finally:
            await producer.stop()

        def consumer() -> AIOKafkaConsumer:
            # Tansu numbers the first generation of a group 0 and aiokafka only sends
            # LeaveGroup for generation > 0, so the first member never leaves explicitly: the
            # next join waits for its session to expire (and the first join takes about half a
            # session). A short session keeps that to ~1 s; Tansu accepts it (Kafka's
            # group.min.session.timeout.ms would not).
            return AIOKafkaConsumer(
                topic,
                bootstrap_servers=broker.bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=1000,
                heartbeat_interval_ms=100,
            )

        first = consumer()
        await first.start()
        try:
            got = [(await first.getone()).value for _ in range(2)]
            assert got == [b"m0", b"m1"]
            await first.commit({tp: 2})  # next offset to read
        finally:
            await first.stop()

        second = consumer()
        await second.start()
        try:
            resumed = await second.getone()
            assert (resumed.value, resumed.offset) == (b"m2", 2)
            assert await second.committed(tp) == 2
        finally:
            await second.stop()

    await asyncio.to_thread(broker.stop)
    assert not broker.running and broker.pid is None
    assert port_closed(port)
    assert process_gone(pid)


def test_two_brokers_get_different_ports() -> None:
    with EmbeddedBroker() as a, EmbeddedBroker() as b:
        assert a.port != b.port and a.pid != b.pid
        wait_for_kafka(f"{a.bootstrap},{b.bootstrap}", timeout=5)
        wait_for_kafka(a.bootstrap, timeout=5)
        wait_for_kafka(b.bootstrap, timeout=5)


def test_stop_is_idempotent_and_restart_reuses_the_port(broker: EmbeddedBroker) -> None:
    port = broker.port
    broker.stop()
    broker.stop()
    assert port is not None and port_closed(port)
    broker.start()
    assert broker.port == port and broker.running
    wait_for_kafka(broker.bootstrap, timeout=5)


def test_explicit_port_in_use_is_reported(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerStartError, match="already in use"):
        EmbeddedBroker(port=broker.port).start(timeout=5)
    wait_for_kafka(broker.bootstrap, timeout=5)  # the original is untouched


@linux_only
def test_sigkilled_parent_leaves_no_broker_behind() -> None:
    script = textwrap.dedent(
        """
        import threading
        from services.infra.embedded_broker import EmbeddedBroker
        broker = EmbeddedBroker()
        broker.start()
        print(broker.pid, broker.port, flush=True)
        threading.Event().wait()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()  # EOF (-> assertion below) if the parent fails
        assert line, f"parent exited with {parent.wait(timeout=5)} before reporting a pid"
        pid, port = (int(x) for x in line.split())
        assert is_tansu(pid) and not process_gone(pid)
        assert process_group(pid) == pid != process_group(parent.pid)
        wait_for_kafka(f"127.0.0.1:{port}", timeout=5)

        parent.send_signal(signal.SIGKILL)  # no atexit, no finalizers: only PDEATHSIG helps
        parent.wait(timeout=5)
        wait_until(lambda: process_gone(pid), timeout=10, what=f"tansu pid {pid} to die")
        assert port_closed(port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@linux_only
def test_ctrl_c_reaches_the_parent_only_which_then_stops_the_broker() -> None:
    script = textwrap.dedent(
        """
        import signal
        import threading
        from services.infra.embedded_broker import EmbeddedBroker
        from services.infra.kafka_probe import wait_for_kafka
        # A terminal's Ctrl-C raises KeyboardInterrupt; under a runner started in the
        # background (nohup ... &) SIGINT arrives ignored and Python keeps it ignored, so the
        # script would wait forever. Restore what an interactive Python has.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with EmbeddedBroker() as broker:
            try:
                print(broker.pid, flush=True)
                threading.Event().wait()
            except KeyboardInterrupt:
                wait_for_kafka(broker.bootstrap, timeout=2)  # SIGINT did not reach the broker
                print("broker still serving", flush=True)
        """
    )
    # Own session = stand-in for the terminal's foreground process group.
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C does
        assert parent.stdout.readline().strip() == "broker still serving"
        assert parent.wait(timeout=10) == 0
        assert process_gone(pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_broker_started_from_a_short_lived_thread_survives_it() -> None:
    """PDEATHSIG fires when the forking *thread* ends; brokers are forked from a long-lived
    thread, so starting one via a throw-away thread (asyncio.to_thread) must be safe."""
    broker = EmbeddedBroker()
    starter = threading.Thread(target=broker.start)
    starter.start()
    starter.join(timeout=20)
    try:
        assert broker.running
        wait_for_kafka(broker.bootstrap, timeout=5)
        assert broker.running
    finally:
        broker.stop()


async def test_frozen_broker_times_out_produce_until_thawed(
    async_broker: EmbeddedBroker,
) -> None:
    broker = async_broker
    topic = "embedded-broker-freeze"
    producer = producer_for(broker, request_timeout_ms=1000, retry_backoff_ms=50)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"warm-up", partition=0), 10)

        broker.freeze()
        assert broker.running
        with pytest.raises((KafkaError, TimeoutError)):
            # aiokafka fails the send with RequestTimedOutError after request_timeout_ms; the
            # outer bound only protects the test should it keep waiting instead.
            await asyncio.wait_for(producer.send_and_wait(topic, b"while-frozen", partition=0), 3)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(wait_for_kafka, broker.bootstrap, 0.3)

        broker.thaw()
        metadata = await asyncio.wait_for(
            producer.send_and_wait(topic, b"after-thaw", partition=0), 10
        )
        assert metadata.offset >= 1
    finally:
        broker.thaw()
        await producer.stop()


def test_stop_kills_a_frozen_broker(broker: EmbeddedBroker) -> None:
    pid, port = broker.pid, broker.port
    assert pid is not None and port is not None
    broker.freeze()
    started = time.monotonic()
    broker.stop(timeout=5)
    assert time.monotonic() - started < 4  # SIGCONT let it act on SIGTERM: no SIGKILL wait
    assert process_gone(pid) and port_closed(port)


def test_stop_with_a_connected_client_escalates_to_sigkill(broker: EmbeddedBroker) -> None:
    """Tansu drains on SIGTERM: it keeps serving open connections and exits only when the last
    client has gone. stop() therefore SIGKILLs after its timeout."""
    pid, port = broker.pid, broker.port
    assert pid is not None and port is not None
    with socket.create_connection(("127.0.0.1", port)):
        started = time.monotonic()
        broker.stop(timeout=0.3)
        assert time.monotonic() - started < 3
        assert process_gone(pid) and port_closed(port)


def test_start_failure_reports_exit_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/bin/false")
    broker = EmbeddedBroker()
    with pytest.raises(BrokerStartError) as info:
        broker.start(timeout=5)
    message = str(info.value)
    assert "/bin/false" in message
    assert "exited with status 1" in message
    assert "CALF_TANSU_BIN" in message
    assert not broker.running and broker.pid is None


def test_start_failure_when_binary_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerStartError, match="CALF_TANSU_BIN"):
        EmbeddedBroker().start(timeout=5)


@linux_only
def test_start_timeout_shows_output_and_kills_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "fake-tansu"
    pid_file = tmp_path / "fake.pid"
    fake.write_text(
        f"#!/bin/sh\necho $$ > {pid_file}\necho 'fake broker says hello'\nexec sleep 60\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    log = tmp_path / "broker.log"
    with pytest.raises(BrokerStartError) as info:
        EmbeddedBroker(log_path=log).start(timeout=0.5)
    message = str(info.value)
    assert "within 0.5s" in message
    assert "fake broker says hello" in message
    assert str(log) in message and "fake broker says hello" in log.read_text()
    assert process_gone(int(pid_file.read_text()))  # start() reaped it before raising


def test_wait_for_kafka_times_out_with_a_clear_message() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
            wait_for_kafka(f"127.0.0.1:{port}", timeout=0.3)
    with pytest.raises(TimeoutError, match="no Kafka broker answered"):
        wait_for_kafka(f"127.0.0.1:{port}", timeout=0.2)  # now closed: refused
