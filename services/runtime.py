"""Running Tandem in one process: embedded broker (unless given), services, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

from services.infra.auth import TokenBook, load_or_create_tokens
from services.infra.edge import header_timeout_protocol
from services.infra.embedded_broker import BrokerStartError, EmbeddedBroker
from services.infra.kafka import KAFKA_TOPICS, ensure_topics, recreate_topics
from services.infra.settings import CommonSettings
from services.matcher.service import MatcherService
from services.matcher.settings import MatcherSettings
from services.registry.service import RegistryService
from services.registry.settings import RegistrySettings
from services.web import create_app

log = logging.getLogger(__name__)
ServiceName = Literal["registry", "matcher"]
#: How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A client pool
#: reuses a connection the server is just closing, and that request fails with a reset; under
#: load a pool of many connections leaves some idle for seconds, so with 5 s this happens (seen
#: in the 50-client load test). Longer than the usual proxy idle timeout (60 s): the proxy
#: closes first, as it should.
KEEP_ALIVE_SECONDS = 75
#: How long a stop waits for requests still running before it cancels them.
SHUTDOWN_GRACE_SECONDS = 10
#: The cyclic garbage collector's first threshold in the registry alone (CPython's default is
#: 700 allocations). Two 5 s wrk runs at 50 connections: young and middle collections took
#: 0.16 s instead of 0.72 s.
GC_YOUNG_THRESHOLD = 10_000
#: The cyclic garbage collector's third threshold in a process with the matcher (CPython's
#: default is 10): full collections ten times rarer. A full collection walks every object
#: (about 0.2 s with the 200,000 a matcher holds), and the planner's allocations set one off
#: every other plan of 2,000 newcomers (0.16-0.19 s of a 0.4-0.5 s plan). What the planner
#: leaves behind is acyclic and freed by reference counting, so memory does not grow.
GC_OLD_THRESHOLD = 100
#: The second threshold in a process with the matcher (CPython's default is 10): a middle
#: collection after 1,000 young ones instead of 10. An ingested batch of 4,000 records keeps
#: its objects alive until it is committed, so they survive young collections and were walked
#: again by the middle ones, every 7,000 allocations: ingesting and planning a burst of 10,000
#: joins ran 66 of them, 50-100 ms in all; now none (measured with gc callbacks, in process).
#: What survives until a middle collection is mostly dead by then, freed by reference counting.
#: With ``GC_OLD_THRESHOLD`` a full collection now follows 100,000 young ones (about 70 million
#: allocations, minutes under load): 3,000 joins at 100/s ended at 239 MB of RSS, 279 MB with
#: the CPython middle threshold (one run each).
GC_MIDDLE_THRESHOLD = 1_000


def settle_garbage_collector(
    young_threshold: int | None = None,
    old_threshold: int | None = None,
    middle_threshold: int | None = None,
) -> None:
    """Collect once and freeze what start-up built (modules, the apps, the services' clients
    and settings): those objects live as long as the process, and without this every full
    collection walks them again. Measured under 50 connections (wrk): the registry ran a full
    collection every two seconds or so, 200 to 550 ms each, which stalled every request in
    flight and made the p99; in the matcher a burst of consumed records triggered a full
    collection every few thousand records (ingesting 10,000 joins, four of them took about 1 s
    of CPU). ``young_threshold`` (CPython's default is 700 allocations) runs
    the young collections less often; they stay cheap, a request's objects die young."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold or young, middle_threshold or middle, old_threshold or old)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it re-raises a captured SIGTERM after shutdown,
    which would end the process with -15 instead of 0. :meth:`Node.wait` handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Node:
    """A running Tandem process: what ``tandem up`` (and ``demo``) start."""

    settings: CommonSettings
    services: tuple[ServiceName, ...] = ("registry", "matcher")
    embed_broker: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    tokens: TokenBook | None = None
    tokens_text: str | None = None
    broker: EmbeddedBroker | None = None
    registry: RegistryService | None = None
    matcher: MatcherService | None = None
    server: uvicorn.Server | None = None
    url: str = ""
    _serving: asyncio.Task[None] | None = field(default=None, repr=False)
    _supervising: asyncio.Task[None] | None = field(default=None, repr=False)
    #: How often the embedded broker's process is looked at.
    broker_check_seconds: float = 0.5
    broker_restarts: int = 0

    async def start(self) -> None:
        """Start the broker (if embedded), the services and the HTTP server."""
        settings = self.settings
        if settings.broker is None:
            if not self.embed_broker:
                raise ValueError("no broker given (--broker / TANDEM_BROKER)")
            self.broker = EmbeddedBroker()
            await asyncio.to_thread(self.broker.start)
            update: dict[str, object] = {"broker": self.broker.bootstrap}
            if settings.kafka_session_timeout_ms is None:
                update["kafka_session_timeout_ms"] = 1500
            if settings.kafka_fetch_max_wait_ms is None:
                update["kafka_fetch_max_wait_ms"] = 20
            if settings.consumer_stall_seconds is None:
                update["consumer_stall_seconds"] = 10.0
            settings = settings.model_copy(update=update)
            self.settings = settings
        with contextlib.suppress(Exception):  # absent broker: consumers create them later
            await asyncio.wait_for(ensure_topics(str(settings.broker), KAFKA_TOPICS), 5)
        self.tokens, self.tokens_text = load_or_create_tokens(
            settings.api_tokens.get_secret_value() if settings.api_tokens else None, settings.data
        )
        # Service-specific options (e.g. matcher_group_id) come from the environment, or from
        # ``overrides`` when a caller runs several differently configured nodes in one process.
        common = {**settings.model_dump(), **self.overrides}
        if "registry" in self.services:
            self.registry = RegistryService(RegistrySettings.model_validate(common))
        if "matcher" in self.services:
            self.matcher = MatcherService(MatcherSettings.model_validate(common))
        app = create_app(
            self.tokens, self.registry, self.matcher, max_body_bytes=settings.max_body_bytes,
            read_timeout_seconds=settings.request_read_timeout_seconds,
        )  # fmt: skip
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
            http=header_timeout_protocol(settings.request_read_timeout_seconds),
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            # A stop never waits for ever on a request that does not end (a client that keeps
            # its request open, a handler stuck on an unreachable database): after this long
            # uvicorn cancels what is left and the services stop.
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )  # fmt: skip
        self.server = _Server(config)
        self._serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._serving.done():
                await self._serving  # raises what stopped it
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{settings.host}:{port}"
        # The registry alone (as docker-compose and the bench run it) also collects its young
        # objects less often; a process with the matcher keeps CPython's young threshold
        # (its peak memory during a burst has its own target) and runs middle and full
        # collections less often.
        if "matcher" in self.services:
            settle_garbage_collector(
                middle_threshold=GC_MIDDLE_THRESHOLD, old_threshold=GC_OLD_THRESHOLD
            )
        else:
            settle_garbage_collector(young_threshold=GC_YOUNG_THRESHOLD)
        if self.broker is not None:
            await self._republish_to_a_fresh_broker()
            self._supervising = asyncio.create_task(
                self._supervise_broker(self.broker), name="embedded-broker-supervisor"
            )

    async def _republish_to_a_fresh_broker(self) -> None:
        """An embedded broker starts empty, but the databases kept everything: members whose
        ``city.joined`` reached the last broker and not yet the matcher (a ``kill -9`` in a
        burst) would be missed for good. Republish every member (idempotent for the matcher)."""
        if self.registry is None:
            return
        count = await self.registry.republish()
        if count:
            log.info(
                "the embedded broker starts empty: republished city.joined for %d members",
                count,
            )

    async def _supervise_broker(self, broker: EmbeddedBroker) -> None:
        """Restart the embedded broker on its address when its process dies, recreate the
        topics and republish every member: it kept nothing (memory only)."""
        backoff = self.broker_check_seconds
        while True:
            await asyncio.sleep(backoff)
            if broker.running:
                backoff = self.broker_check_seconds
                continue
            log.error(
                "the embedded broker at %s died (exit status %s); restarting it on the same "
                "address. It kept nothing: topics are recreated and every member is republished",
                broker.bootstrap, broker.returncode,
            )  # fmt: skip
            try:
                await asyncio.to_thread(broker.start)
            except BrokerStartError as error:
                backoff = min(max(backoff * 2, 1.0), 10.0)
                log.error("restarting the embedded broker failed (%s); retrying in %.0f s",
                          error, backoff)  # fmt: skip
                continue
            self.broker_restarts += 1
            with contextlib.suppress(Exception):  # the consumers' watch creates them otherwise
                await asyncio.wait_for(recreate_topics(broker.bootstrap, KAFKA_TOPICS), 30)
            count = 0
            if self.registry is not None:
                count = await self.registry.republish()
            log.warning(
                "the embedded broker is back at %s (restart %d); republished city.joined for "
                "%d members", broker.bootstrap, self.broker_restarts, count,
            )  # fmt: skip

    async def wait(self) -> None:
        """Serve until SIGINT or SIGTERM asks for a clean stop."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._request_exit)
        try:
            if self._serving is not None:
                await self._serving
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    def _request_exit(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    async def stop(self) -> None:
        """Stop the server (and with it the services), then the embedded broker."""
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervising
        if self.server is not None and self._serving is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
