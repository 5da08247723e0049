"""Is there a Kafka broker at this address? A wire-protocol probe over a plain socket.

``wait_for_kafka`` blocks until a broker answers; ``probe_kafka`` is one attempt. Both work for
any Kafka-protocol broker (Apache Kafka 0.10+ and 4.x, Tansu, Redpanda); ``EmbeddedBroker``
uses the probe to decide when the broker it started is ready.
"""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["ProtocolError", "parse_bootstrap", "probe_kafka", "wait_for_kafka"]


class ProtocolError(Exception):
    """The peer did not answer like a Kafka broker (yet)."""


# ---------------------------------------------------------------------------------------------
# Readiness: a real Kafka round trip over a plain socket
# ---------------------------------------------------------------------------------------------
#
# A TCP connect alone is not proof of readiness: it also succeeds against a process that is
# frozen (the kernel completes the handshake into the listen backlog), against a non-Kafka
# service, or against another broker that already held the port. So we speak the protocol:
# ApiVersions v0 (every Kafka broker, including 4.x, must answer v0) and then a Metadata request
# in a version the broker advertised, which must list at least one broker - the point at which
# aiokafka's bootstrap succeeds, too. Plain blocking sockets keep this usable from sync code,
# from threads and from inside a running event loop's worker thread, with no logging noise.

_API_METADATA = 3
_API_VERSIONS = 18
_CLIENT_ID = b"tandem-readiness-probe"
_MAX_FRAME = 64 * 1024 * 1024


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ProtocolError("connection closed by the peer")
        buf += chunk
    return bytes(buf)


def _round_trip(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes
) -> bytes:
    """Send one request (header v1, non-flexible) and return the response body."""
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 4 <= size <= _MAX_FRAME:
        raise ProtocolError(f"implausible response size {size}")
    response = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", response, 0)
    if got != correlation_id:
        raise ProtocolError(f"correlation id {got} != {correlation_id}")
    return response[4:]


def probe_kafka(host: str, port: int, timeout: float) -> None:
    """One ApiVersions + Metadata round trip; raises OSError/ProtocolError if not ready."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            body = _round_trip(sock, _API_VERSIONS, 0, 1, b"")
            error_code, count = struct.unpack_from(">hi", body, 0)
            if error_code != 0:
                raise ProtocolError(f"ApiVersions error code {error_code}")
            ranges: dict[int, tuple[int, int]] = {}
            for i in range(count):
                key, lo, hi = struct.unpack_from(">hhh", body, 6 + 6 * i)
                ranges[key] = (lo, hi)
            if _API_METADATA not in ranges:
                raise ProtocolError("broker does not offer the Metadata API")
            lo, hi = ranges[_API_METADATA]
            version = min(hi, 8)  # v9+ are "flexible" encodings; v0..v8 share one layout
            if version < lo:
                return  # a broker newer than this probe: its ApiVersions answer must suffice
            request = struct.pack(">i", 0)  # v0: all topics; v1+: no topics, brokers only
            if version >= 4:
                request += b"\x00"  # allow_auto_topic_creation = false
            if version >= 8:
                request += b"\x00\x00"  # include cluster/topic authorized operations = false
            body = _round_trip(sock, _API_METADATA, version, 2, request)
            offset = 4 if version >= 3 else 0  # throttle_time_ms
            (brokers,) = struct.unpack_from(">i", body, offset)
            if brokers < 1:
                raise ProtocolError("Metadata lists no brokers yet")
        except struct.error as exc:
            raise ProtocolError(f"malformed response: {exc}") from exc


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``"h1:9092,[::1]:9093"`` -> ``[("h1", 9092), ("::1", 9093)]``."""
    addresses: list[tuple[str, int]] = []
    for raw in bootstrap.split(","):
        item = raw.strip()
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bootstrap address {raw!r} is not host:port")
        addresses.append((host.strip("[]") or "localhost", int(port)))
    if not addresses:
        raise ValueError(f"empty bootstrap address list {bootstrap!r}")
    return addresses


def wait_for_kafka(bootstrap: str, timeout: float) -> None:
    """Block until a Kafka broker at ``bootstrap`` (comma-separated ``host:port`` list; any one
    suffices) answers ApiVersions and Metadata requests, or raise :class:`TimeoutError`.

    Works for any Kafka-protocol broker (Apache Kafka 0.10+ and 4.x, Tansu, Redpanda). Polls
    with a short back-off; safe to call from threads (use ``asyncio.to_thread`` from async code).
    """
    addresses = parse_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout
    delay = 0.01
    last_error: BaseException | None = None
    while True:
        for host, port in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                probe_kafka(host, port, min(remaining, 2.0))
                return
            except (OSError, ProtocolError) as exc:
                last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no Kafka broker answered at {bootstrap!r} within {timeout:g}s "
                f"(last error: {last_error!r})"
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.2)
