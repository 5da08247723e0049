"""Prometheus metrics of both services (one registry per process; names are part of the
operations contract and pinned by a test)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EVENTS_CONSUMED = Counter("tandem_events_consumed", "Kafka records consumed, by topic.", ["topic"])
EVENTS_PUBLISHED = Counter(
    "tandem_events_published", "Records the broker acknowledged, by topic.", ["topic"]
)
DEAD_LETTERS = Counter(
    "tandem_dead_letters", "Records sent to a dead-letter topic, by original topic.", ["topic"]
)
OUTBOX_PARKED = Counter(
    "tandem_outbox_parked",
    "Outbox records the broker refused for good and the relay parked, by topic.",
    ["topic"],
)
OUTBOX_BACKLOG = Gauge(
    "tandem_outbox_backlog", "Outbox rows not yet acknowledged by the broker.", ["service"]
)
SOLVE_SECONDS = Histogram(
    "tandem_solve_seconds",
    "Duration of a joint re-solve (scoring, assignment, explanations, writing).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PLANS = Counter(
    "tandem_plans",
    "Plans by kind: incremental (repaired from the last plan), full (first plan, new weights "
    "or day, pins) or fallback (the incremental state was inconsistent; planned in full).",
    ["kind"],
)
for _kind in ("incremental", "full", "fallback"):
    PLANS.labels(_kind)
PROPOSALS = Gauge("tandem_proposals", "Tandem proposals by status.", ["status"])
ADVICE_REQUESTS = Counter(
    "tandem_advice_requests", "Collegial-advice requests answered, by source.", ["source"]
)
CONSUMER_LAG = Gauge(
    "tandem_consumer_lag", "Records behind the partition end, by consumer group.", ["group"]
)
HTTP_REQUESTS = Counter(
    "tandem_http_requests", "HTTP requests by method, route and status.",
    ["method", "route", "status"],
)  # fmt: skip

#: The metric names operators and dashboards rely on (counters get ``_total`` on export).
METRIC_NAMES = (
    "tandem_events_consumed_total",
    "tandem_events_published_total",
    "tandem_dead_letters_total",
    "tandem_outbox_backlog",
    "tandem_outbox_parked_total",
    "tandem_solve_seconds",
    "tandem_plans_total",
    "tandem_proposals",
    "tandem_advice_requests_total",
    "tandem_consumer_lag",
    "tandem_http_requests_total",
)


class CountRequests:
    """Counts every HTTP request in ``tandem_http_requests`` by method, route template and
    status. Pure ASGI (a ``BaseHTTPMiddleware`` costs about a third of the throughput,
    Starlette #1678): the route is what the router put in the shared scope, the status what the
    response started with; a request whose handler raised counts as a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
