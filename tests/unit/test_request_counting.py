"""The pure-ASGI request counter: route template and status of every request, also of requests
the inner middleware answers (413) and of handlers that raise (500)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.middleware.base import BaseHTTPMiddleware

from services.infra.http import BodyLimit
from services.infra.logs import RequestIds
from services.infra.metrics import CountRequests


def _count(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("tandem_http_requests_total", labels) or 0.0


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=100)
    app.add_middleware(RequestIds)
    app.add_middleware(CountRequests)

    @app.post("/things/{thing_id}")
    async def post_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("boom")

    return app


async def test_counts_by_route_template_and_status_without_base_http_middleware() -> None:
    app = _app()
    assert not any(m.cls is BaseHTTPMiddleware for m in app.user_middleware)
    before = {
        key: _count(*key)
        for key in (
            ("POST", "/things/{thing_id}", "200"),
            ("POST", "unmatched", "413"),
            ("GET", "unmatched", "404"),
            ("GET", "/broken", "500"),
        )
    }
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/things/a", headers={"X-Request-ID": "req-7"})
        await client.post("/things/b")
        too_large = await client.post("/things/c", content=b"x" * 101)
        missing = await client.get("/nowhere")
        failed = await client.get("/broken")

    assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-7"
    assert (too_large.status_code, missing.status_code, failed.status_code) == (413, 404, 500)
    after = {key: _count(*key) for key in before}
    assert (
        after[("POST", "/things/{thing_id}", "200")] - before[("POST", "/things/{thing_id}", "200")]
        == 2
    )
    assert after[("POST", "unmatched", "413")] - before[("POST", "unmatched", "413")] == 1
    assert after[("GET", "unmatched", "404")] - before[("GET", "unmatched", "404")] == 1
    assert after[("GET", "/broken", "500")] - before[("GET", "/broken", "500")] == 1
