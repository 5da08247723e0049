"""What the system benchmarks share: a broker, services as subprocesses, a topic tap, stats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.infra.embedded_broker import EmbeddedBroker
from services.infra.kafka import ensure_topics

#: Topics both services use, created up front with the partition count the runtime uses.
TOPICS = (
    "city.joined", "city.updated", "city.left", "tandem.proposed", "tandem.decided",
    "member.admitted", "bench.reference",
)  # fmt: skip
SESSION_TIMEOUT_MS = 1500  # Tansu: a group join takes about half the session timeout
STAFF_TOKEN = "bench-staff-token"
PLATFORM_TOKEN = "bench-platform-token"


def median(values: Sequence[float]) -> float:
    """The median (of the runs of one figure)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile, e.g. ``share=0.99``; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-share * len(ordered) // 1))))
    return float(ordered[rank - 1])


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_broker() -> AsyncIterator[EmbeddedBroker]:
    """A fresh embedded broker (memory only) with the Tandem topics."""
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        await asyncio.wait_for(ensure_topics(broker.bootstrap, TOPICS), 30)
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def tandem_executable() -> list[str]:
    """The ``tandem`` console script next to this Python, else ``python -m services.cli``."""
    script = Path(sys.executable).parent / "tandem"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )


@dataclass
class Service:
    """``tandem registry`` or ``tandem matcher`` as its own process, as docker-compose runs it."""

    name: str
    bootstrap: str
    data: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 60) -> None:
        """Spawn the service and wait until ``/ready`` answers 200 (consumer in its group)."""
        self.port = free_port()
        self.data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TANDEM_API_TOKENS": f"platform:{PLATFORM_TOKEN},staff:{STAFF_TOKEN}:Bench",
            "TANDEM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            # The services run on the embedded broker here, as `tandem up` configures it.
            "TANDEM_KAFKA_FETCH_MAX_WAIT_MS": "20",
            "TANDEM_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        for key in ("TANDEM_DATABASE_URL", "TANDEM_BROKER"):
            if key not in self.extra_env:
                env.pop(key, None)
        self.log_path = self.data / f"{self.name}.log"
        self.process = _spawn(
            [*tandem_executable(), self.name, "--broker", self.bootstrap,
             "--data", str(self.data), "--port", str(self.port)],
            env, self.log_path,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/ready")).status_code == 200:
                        self._profile()
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready in {timeout} s: {self.log_tail()}")
                await asyncio.sleep(0.1)

    def _profile(self) -> None:
        """With ``TANDEM_BENCH_PYSPY=DIR``, record a py-spy flame graph of the service into DIR
        (for finding hot spots; py-spy is not a dependency of Tandem)."""
        target = os.environ.get("TANDEM_BENCH_PYSPY")
        if not target:
            return
        out = Path(target) / f"{self.name}-{self.pid}.txt"
        self.profiler = _spawn(
            ["py-spy", "record", "--pid", str(self.pid), "--output", str(out), "--rate", "200",
             "--format", "raw"],
            dict(os.environ), Path(target) / f"py-spy-{self.pid}.log",
        )  # fmt: skip

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-2000:]

    def _status_kib(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/{self.pid}/status (Linux only)")

    def peak_rss_mb(self) -> float:
        """The process's peak resident set size so far (``VmHWM``), in MiB."""
        return self._status_kib("VmHWM") / 1024

    def rss_mb(self) -> float:
        """The process's resident set size now (``VmRSS``), in MiB."""
        return self._status_kib("VmRSS") / 1024

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 15 s)."""
        process, self.process = self.process, None
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(profiler.wait, 30)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


@contextlib.asynccontextmanager
async def service_running(
    name: str, bootstrap: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Service]:
    """A service subprocess with a throw-away data directory."""
    with tempfile.TemporaryDirectory(prefix=f"tandem-bench-{name}-") as data:
        service = Service(name, bootstrap, Path(data), extra_env or {})
        try:
            await service.start()
            yield service
        finally:
            await service.stop()


def producer(bootstrap: str) -> AIOKafkaProducer:
    """The producer the benchmarks feed the system with (the registry's relay settings)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=2,
        request_timeout_ms=30_000,
    )  # fmt: skip


async def send_all(
    sender: AIOKafkaProducer, topic: str, messages: Sequence[tuple[bytes, bytes]]
) -> None:
    """Send ``(key, value)`` messages and wait for every acknowledgement."""
    futures = [await sender.send(topic, value, key=key) for key, value in messages]
    await asyncio.gather(*futures)


class Tap:
    """Reads a topic from its current end in the background and notes when each record arrived:
    ``arrivals`` holds ``(monotonic time, key, value)``. Tansu does not answer a waiting fetch
    as soon as records arrive (a consumer's delay grows with ``fetch_max_wait_ms``), so the tap
    waits at most 20 ms (not aiokafka's 500): its own delay stays small next to what it
    measures."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.on_record: Callable[[float, str, bytes], None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=20, max_partition_fetch_bytes=4 << 20,
        )  # fmt: skip
        await consumer.start()
        await consumer.topics()  # fetches the metadata of every topic
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist")
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the end offsets now, not at the first fetch
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.monotonic()
            for messages in batch.values():
                for message in messages:
                    key = message.key.decode() if message.key else ""
                    value = message.value or b""
                    self.arrivals.append((now, key, value))
                    if self.on_record is not None:
                        self.on_record(now, key, value)

    async def wait_for(self, count: int, timeout: float) -> None:
        """Until ``count`` records arrived (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: {len(self.arrivals)} of {count} records")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


async def staff_get(client: httpx.AsyncClient, url: str) -> Any:
    """GET with the bench's staff token; the parsed JSON."""
    response = await client.get(url, headers={"Authorization": f"Bearer {STAFF_TOKEN}"})
    response.raise_for_status()
    return response.json()


async def solve_seconds(client: httpx.AsyncClient, url: str) -> tuple[int, float]:
    """How many solves the matcher at ``url`` ran and their total seconds (its metrics)."""
    text = (await client.get(f"{url}/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("tandem_solve_seconds_count", "tandem_solve_seconds_sum")):
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return int(values.get("tandem_solve_seconds_count", 0)), values.get(
        "tandem_solve_seconds_sum", 0.0
    )
