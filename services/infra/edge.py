"""Guards at the HTTP edge against what a client sends: U+0000 in a path or query, a client too
slow to send its request, and the answer when the database is away (503, never 500).

Each piece stands alone: two pure-ASGI middlewares, an exception handler and the uvicorn
protocol with a header timeout (uvicorn has none of its own: a client that sends its headers
one byte a second holds its connection for as long as it likes)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.infra.db import is_connection_loss

log = logging.getLogger(__name__)

#: How long a client is asked to wait before it tries again when the database is away.
RETRY_AFTER_SECONDS = 1


async def _answer(send: Send, status: int, detail: Any, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json")]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class RefuseNul:
    """422 for a path or query string holding U+0000 (raw or percent-encoded): PostgreSQL
    stores no such text, and no id or filter of the API contains it. Bodies are checked where
    they are parsed (:class:`services.infra.http.SafeRoute`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = None
            if "\x00" in scope["path"]:
                where = "path"
            else:
                query: bytes = scope.get("query_string", b"")
                if b"\x00" in unquote_to_bytes(query.replace(b"+", b" ")):
                    where = "query"
            if where is not None:
                error = {"loc": [where], "type": "string_nul",
                         "msg": "must not contain the NUL character (U+0000)"}  # fmt: skip
                await _answer(send, 422, [error])
                return
        await self.app(scope, receive, send)


class _ReadTimedOut(Exception):
    pass


class ReadTimeout:
    """408 (and the connection closed) for a request whose body has not arrived ``seconds``
    after its headers: a client sending a byte a second holds no worker for long. The time
    counts for the whole body, not per chunk."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False
        timed_out = False
        started = False

        async def timed() -> Message:
            nonlocal complete, timed_out
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise _ReadTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def guarded(message: Message) -> None:
            # FastAPI answers an error while reading the body with its own 400; after a
            # time-out that answer is dropped and the 408 below goes out instead.
            nonlocal started
            if timed_out and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed, guarded)
        except Exception:
            if not timed_out or started:
                raise
        if timed_out and not started:
            log.info("request body not received within %.1f s: 408", self.seconds)
            detail = f"request body not received within {self.seconds:g} s"
            await _answer(send, 408, detail, close=True)


async def database_away(request: Request, error: Exception) -> JSONResponse:
    """503 with ``Retry-After`` when the database is away or busy for a moment (the write's
    transaction is rolled back: nothing is half done); any other error stays a 500."""
    if not is_connection_loss(error):
        raise error
    log.warning(
        "database unavailable for %s %s: %s", request.method, request.url.path,
        type(error).__name__,
    )  # fmt: skip
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable for a moment; try again"},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


_HEADER_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection (with a 408) whose next request's headers
    are not complete ``seconds`` after its first byte arrived, or after the connection opened.
    The same clock runs while a request body the application did not read drains after the
    answer. uvicorn's keep-alive time-out still closes idle connections between requests."""
    body = json.dumps({"detail": f"request headers not received within {seconds:g} s"}).encode()
    answer = _HEADER_TIMEOUT % (len(body), body)

    class HeaderTimeoutH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _armed_for: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()
            super().data_received(data)
            self._disarm_if_started()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm_if_started()
            if self._header_timer is None and self._between_requests():
                if self.conn.trailing_data[0]:  # part of a pipelined request is waiting
                    self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._armed_for = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _disarm_if_started(self) -> None:
            if self._header_timer is not None and self.cycle is not self._armed_for:
                self._disarm()

        def _expired(self) -> None:
            self._header_timer = None
            if self.cycle is not self._armed_for or self.transport.is_closing():
                return
            log.info("request headers not received within %.1f s: connection closed", seconds)
            self.transport.write(answer)
            self.transport.close()

    return HeaderTimeoutH11
