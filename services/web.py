"""One HTTP application for whichever services run in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas import generate
from services.infra.auth import TokenBook
from services.infra.consumer import consumer_lag, run_consumer
from services.infra.http import BodyLimit
from services.infra.logs import RequestIds
from services.infra.metrics import CONSUMER_LAG, OUTBOX_BACKLOG, PROPOSALS, CountRequests
from services.matcher import store as matcher_store
from services.matcher.consumers import build_consumer as build_matcher_consumer
from services.matcher.service import MatcherService
from services.registry.consumers import build_consumer as build_registry_consumer
from services.registry.service import RegistryService


def create_app(
    tokens: TokenBook,
    registry: RegistryService | None = None,
    matcher: MatcherService | None = None,
    *,
    max_body_bytes: int = 1_000_000,
    consume: bool = True,
) -> FastAPI:
    """The API of the given services on one base URL, with ``/health``, ``/ready``,
    ``/metrics``. The lifespan starts and stops the services."""

    brokers: list[KafkaBroker] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        brokers.clear()
        if registry is not None:
            await registry.start()
            if consume:
                brokers.append(build_registry_consumer(registry))
                tasks.append(
                    asyncio.create_task(run_consumer(brokers[-1], registry.mark_consuming))
                )
        if matcher is not None:
            await matcher.start()
            if consume:
                brokers.append(build_matcher_consumer(matcher))
                tasks.append(asyncio.create_task(run_consumer(brokers[-1], matcher.mark_consuming)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for broker in brokers:
                with contextlib.suppress(Exception):
                    await broker.stop()
            if matcher is not None:
                await matcher.stop()
            if registry is not None:
                await registry.stop()

    app = FastAPI(
        title="Tandem",
        summary="Tandem-Städte and collegial advice for the Engagierte Stadt network",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.tokens = tokens
    app.state.registry = registry
    app.state.matcher = matcher
    app.state.brokers = brokers
    # Pure ASGI middleware only (the last added runs first): a BaseHTTPMiddleware alone costs
    # about a third of the throughput (Starlette #1678, FastAPI #2241).
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestIds)
    app.add_middleware(CountRequests)

    if registry is not None:
        from services.registry.api import router as registry_router

        app.include_router(registry_router)
    if matcher is not None:
        from services.matcher.advice_api import router as advice_router
        from services.matcher.api import router as matcher_router

        app.include_router(matcher_router)
        app.include_router(advice_router)

    from services.staff.page import HERE as STAFF_DIR
    from services.staff.page import router as staff_router

    app.mount("/ui/static", StaticFiles(directory=STAFF_DIR / "static"), name="staff-static")
    app.include_router(staff_router)

    @app.get("/health", tags=["operations"], summary="200 while the process lives")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], summary="200 when broker and database answer")
    async def ready() -> JSONResponse:
        checks: dict[str, Any] = {}
        for name, service in (("registry", registry), ("matcher", matcher)):
            if service is not None:
                checks[name] = await service.ready()
        ok = all(all(c.values()) for c in checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": checks})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        await refresh_gauges(registry, matcher, brokers)
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs/asyncapi", tags=["operations"], summary="AsyncAPI document of the events")
    async def asyncapi() -> JSONResponse:
        return JSONResponse(content=generate.asyncapi())

    return app


async def refresh_gauges(
    registry: RegistryService | None, matcher: MatcherService | None, brokers: list[KafkaBroker]
) -> None:
    """Read the gauges' current values just before a scrape (cheap counts)."""
    with contextlib.suppress(Exception):  # a database that is away must not break /metrics
        if registry is not None:
            OUTBOX_BACKLOG.labels("registry").set(await registry.relay.backlog())
        if matcher is not None:
            OUTBOX_BACKLOG.labels("matcher").set(await matcher.relay.backlog())
            counts = await matcher_store.status_counts(matcher.engine)
            for status in matcher_store.PROPOSAL_STATUSES:
                PROPOSALS.labels(status).set(counts[status])
    for broker in brokers:
        for group, behind in consumer_lag(broker).items():
            CONSUMER_LAG.labels(group).set(behind)
