"""Running Tandem in one process: embedded broker (unless given), services, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

from schemas.events import EVENTS, Topics
from services.infra.auth import TokenBook, load_or_create_tokens
from services.infra.embedded_broker import EmbeddedBroker
from services.infra.kafka import ensure_topics
from services.infra.settings import CommonSettings, MatcherSettings, RegistrySettings
from services.matcher.service import MatcherService
from services.registry.service import RegistryService
from services.web import create_app

log = logging.getLogger(__name__)
ServiceName = Literal["registry", "matcher"]
#: Created up front (three partitions each), so consumers join with the intended partitions
#: and the first publish to a topic does not wait for the broker to create it.
TOPICS = (*EVENTS, *(Topics.dlq(t) for t in EVENTS))
#: How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A client pool
#: reuses a connection the server is just closing, and that request fails with a reset; under
#: load a pool of many connections leaves some idle for seconds, so with 5 s this happens (seen
#: in the 50-client load test). Longer than the usual proxy idle timeout (60 s): the proxy
#: closes first, as it should.
KEEP_ALIVE_SECONDS = 75


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
            settings = settings.model_copy(update=update)
            self.settings = settings
        with contextlib.suppress(Exception):  # absent broker: consumers create them later
            await asyncio.wait_for(ensure_topics(str(settings.broker), TOPICS), 5)
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
            self.tokens, self.registry, self.matcher, max_body_bytes=settings.max_body_bytes
        )
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
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
        if self.server is not None and self._serving is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
