"""Child processes that die with their parent, and what /proc tells about them (Linux; the
embedded broker's process hygiene: a broker left behind by a crashed test run would hold a port
and memory forever, so the child is tied to its parent in several layers)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

IS_LINUX = sys.platform.startswith("linux")
_IS_LINUX = IS_LINUX

# ---------------------------------------------------------------------------------------------
# Tying the child's life to ours
# ---------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not _IS_LINUX:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    prctl.argtypes = [  # type: ignore[attr-defined]
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    prctl.restype = ctypes.c_int  # type: ignore[attr-defined]
    return prctl


# Resolved once, in the parent: between fork and exec the child must do as little as possible
# (no dlopen, no imports), because other threads of the parent may have held locks at fork time.
PRCTL = _load_prctl()


def child_preexec(parent_pid: int) -> None:
    """Runs in the forked child right before exec (Linux only).

    ``PR_SET_PDEATHSIG(SIGKILL)`` makes the kernel SIGKILL the broker as soon as its parent goes
    away - including when the parent is SIGKILLed or segfaults, where no Python cleanup (atexit,
    finalizers, ``finally``) can run. The setting survives exec (the binary is not setuid).
    If the parent died between fork and prctl we would have been re-parented already and would
    never get the signal, hence the ``getppid`` check.
    """
    if PRCTL is not None:
        if PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)


_SpawnRequest = tuple[Callable[[], "subprocess.Popen[bytes]"], "Future[subprocess.Popen[bytes]]"]


class _Spawner:
    """One long-lived daemon thread that forks every broker.

    Linux delivers PDEATHSIG when the *thread* that forked the child exits, not the process. If
    ``start()`` forked directly, a broker started from a short-lived thread - e.g. the default
    executor behind ``asyncio.to_thread``, which is shut down when its event loop closes - would
    be SIGKILLed the moment that thread ended. Forking from a daemon thread that lives as long as
    the process keeps "parent died" meaning exactly that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[_SpawnRequest] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            spawn, result = self._requests.get()
            if not result.set_running_or_notify_cancel():
                continue
            try:
                result.set_result(spawn())
            except BaseException as exc:
                result.set_exception(exc)

    def run(self, spawn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="embedded-broker-spawner", daemon=True
                )
                self._thread.start()
        result: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((spawn, result))
        return result.result()


SPAWNER = _Spawner()


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (Tansu exits cleanly on it), then SIGKILL after ``timeout``; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            # A frozen (SIGSTOPped) process would hold the TERM pending forever: wake it up.
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def finalize_broker(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup, run by ``weakref.finalize`` on garbage collection and - because
    finalize objects default to ``atexit=True`` - from its interpreter-exit hook."""
    # Short grace: at exit our own client sockets are still open, and Tansu would wait for them.
    terminate(proc, timeout=0.5)


# ---------------------------------------------------------------------------------------------
# Misc helpers
# ---------------------------------------------------------------------------------------------


def free_port(host: str) -> int:
    """Ask the kernel for a currently free port (it may be taken again before Tansu binds it;
    ``start`` detects that and retries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = TCP_LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on ``port`` (None: cannot tell).

    Guards against a readiness probe that reached a *different* broker which already held the
    port (our Tansu then exits with AddrInUse a moment later).
    """
    if not _IS_LINUX:
        return None
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def _thread_states(pid: int) -> list[str]:
    """One-letter scheduler states of all threads of ``pid`` (empty once it is gone)."""
    states: list[str] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return states
    for tid in tids:
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            states.append(stat.rsplit(")", 1)[1].split()[0])
    return states


def wait_all_threads_stopped(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pid)
        if all(state in ("T", "t", "Z", "X") for state in states):  # also true once gone
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"broker pid {pid} did not stop within {timeout:g}s: {states}")
        time.sleep(0.001)
