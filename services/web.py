"""One HTTP application for whichever services run in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from schemas import generate
from schemas.topics import sorted_vocabulary, topic_label
from services.infra.auth import TokenBook
from services.infra.consumer import SupervisedConsumer, consumer_lag
from services.infra.edge import ReadTimeout, RefuseNul, database_away
from services.infra.http import BodyLimit, caller
from services.infra.logs import RequestIds
from services.infra.metrics import CONSUMER_LAG, OUTBOX_BACKLOG, PROPOSALS, CountRequests
from services.matcher import store as matcher_store
from services.matcher.consumers import build_consumer as build_matcher_consumer
from services.matcher.service import MatcherService
from services.registry.consumers import build_consumer as build_registry_consumer
from services.registry.service import RegistryService

_CHECK_FAILED = {
    "database": "the database does not answer",
    "broker": "the broker does not answer, or the consumer has not joined its group yet",
}


def create_app(
    tokens: TokenBook,
    registry: RegistryService | None = None,
    matcher: MatcherService | None = None,
    *,
    max_body_bytes: int = 1_000_000,
    read_timeout_seconds: float = 20.0,
    consume: bool = True,
) -> FastAPI:
    """The API of the given services on one base URL, with ``/health``, ``/ready``,
    ``/metrics``. The lifespan starts and stops the services."""
    consumers: dict[str, SupervisedConsumer] = {}
    app = FastAPI(
        title="Tandem",
        summary="Tandem-Städte and collegial advice for the Engagierte Stadt network",
        version="0.1.0",
        lifespan=_lifespan(registry, matcher, consumers, consume=consume),
    )
    app.state.tokens = tokens
    app.state.registry = registry
    app.state.matcher = matcher
    app.state.consumers = consumers
    _add_edge(app, max_body_bytes=max_body_bytes, read_timeout_seconds=read_timeout_seconds)
    _include_routers(app, registry, matcher)
    _add_operations(app, registry, matcher, consumers)
    return app


def _lifespan(
    registry: RegistryService | None,
    matcher: MatcherService | None,
    consumers: dict[str, SupervisedConsumer],
    *,
    consume: bool,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the services and (with ``consume``) their supervised consumers; stop them all."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        consumers.clear()
        if registry is not None:
            await registry.start()
            if consume:
                consumers["registry"] = SupervisedConsumer(
                    lambda: build_registry_consumer(registry), registry.mark_consuming,
                    registry.settings, name="registry",
                )  # fmt: skip
        if matcher is not None:
            await matcher.start()
            if consume:
                supervised = consumers["matcher"] = SupervisedConsumer(
                    lambda: build_matcher_consumer(matcher), matcher.mark_consuming,
                    matcher.settings, name="matcher",
                )  # fmt: skip
                # The solver waits for a burst's records still to be ingested.
                matcher.intake.broker = lambda: supervised.broker
        tasks = [
            asyncio.create_task(consumer.run(), name=f"{name}-consumer")
            for name, consumer in consumers.items()
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for consumer in consumers.values():
                await consumer.stop()
            if matcher is not None:
                await matcher.stop()
            if registry is not None:
                await registry.stop()

    return lifespan


def _add_edge(app: FastAPI, *, max_body_bytes: int, read_timeout_seconds: float) -> None:
    """What every request passes: limits, request ids, counting, the database-away answer."""
    # Pure ASGI middleware only (the last added runs first): a BaseHTTPMiddleware alone costs
    # about a third of the throughput (Starlette #1678, FastAPI #2241).
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ReadTimeout, seconds=read_timeout_seconds)
    app.add_middleware(RefuseNul)
    for away in (DBAPIError, PoolTimeout, OSError):
        app.add_exception_handler(away, database_away)
    app.add_middleware(RequestIds)
    app.add_middleware(CountRequests)


def _include_routers(
    app: FastAPI, registry: RegistryService | None, matcher: MatcherService | None
) -> None:
    """The APIs of the services that run here, and the staff page."""
    if registry is not None:
        from services.registry.api import router as registry_router

        app.include_router(registry_router)
    if matcher is not None:
        from services.matcher.advice_api import router as advice_router
        from services.matcher.api import router as matcher_router
        from services.matcher.calibration_api import router as weights_router

        app.include_router(matcher_router)
        app.include_router(advice_router)
        app.include_router(weights_router)

    from services.staff.calibration import router as staff_weights_router
    from services.staff.page import HERE as STAFF_DIR
    from services.staff.page import router as staff_router

    app.mount("/ui/static", StaticFiles(directory=STAFF_DIR / "static"), name="staff-static")
    app.include_router(staff_router)
    app.include_router(staff_weights_router)


def _add_operations(
    app: FastAPI,
    registry: RegistryService | None,
    matcher: MatcherService | None,
    consumers: dict[str, SupervisedConsumer],
) -> None:
    """The topic list and the operator's endpoints: health, readiness, metrics, AsyncAPI."""

    @app.get(
        "/api/topics",
        tags=["members"],
        summary="The topic vocabulary",
        dependencies=[Depends(caller)],
    )
    async def topics() -> dict[str, Any]:
        """Every topic interests, strengths and advice requests may name: its slug (stored) and
        its German label (accepted as input too). Any known token."""
        items = [{"slug": t, "label": topic_label(t)} for t in sorted_vocabulary()]
        return {"items": items, "total": len(items)}

    @app.get("/health", tags=["operations"], summary="200 while the process lives")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["operations"],
        summary="200 when broker and database answer and the consumers get on; else 503 with "
        "the reasons",
    )
    async def ready() -> JSONResponse:
        ok, content = await readiness(registry, matcher, consumers)
        return JSONResponse(status_code=200 if ok else 503, content=content)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        await refresh_gauges(registry, matcher, [c.broker for c in consumers.values()])
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs/asyncapi", tags=["operations"], summary="AsyncAPI document of the events")
    async def asyncapi() -> JSONResponse:
        return JSONResponse(content=generate.asyncapi())


async def readiness(
    registry: RegistryService | None,
    matcher: MatcherService | None,
    consumers: dict[str, SupervisedConsumer],
) -> tuple[bool, dict[str, Any]]:
    """Whether every service's broker, database and consumer answer, and the body that says
    so: ``checks`` per service, ``reasons`` for what fails, ``problems`` for what keeps records
    from the broker (a parked record does not make a service unready, but an operator should
    see it)."""
    checks: dict[str, Any] = {}
    reasons: list[str] = []
    for name, service in (("registry", registry), ("matcher", matcher)):
        if service is None:
            continue
        checks[name] = check = await service.ready()
        reasons.extend(f"{name}: {_CHECK_FAILED.get(part, part + ' failed')}"
                       for part, fine in check.items() if not fine)  # fmt: skip
        consumer = consumers.get(name)
        if consumer is not None:
            check["consumer"] = consumer.problem is None
            if consumer.problem is not None:
                reasons.append(f"{name}: {consumer.problem}")
    ok = all(all(c.values()) for c in checks.values())
    content: dict[str, Any] = {"ready": ok, "checks": checks}
    problems = await outbox_problems(registry, matcher)
    if problems:
        content["problems"] = problems
    if reasons:
        content["reasons"] = reasons
    return ok, content


async def outbox_problems(
    registry: RegistryService | None, matcher: MatcherService | None
) -> list[str]:
    """``<service> outbox: …`` for each problem of a relay (none if its database is away)."""
    found: list[str] = []
    for name, service in (("registry", registry), ("matcher", matcher)):
        if service is not None:
            with contextlib.suppress(Exception):
                found += [f"{name} {problem}" for problem in await service.relay.problems()]
    return found


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
