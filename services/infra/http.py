"""HTTP edge shared by the services: authentication, paging, body limits, error shapes."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.infra.auth import Principal, Role, TokenBook


async def caller(request: Request) -> Principal:
    """The authenticated caller; 401 without a known bearer token. (Dependencies here are
    ``async``: FastAPI runs a plain ``def`` one in a worker thread, a thread hop per request.)"""
    book: TokenBook = request.app.state.tokens
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    principal = book.lookup(token.strip()) if scheme.lower() == "bearer" and token else None
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def require(*roles: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency that admits only ``roles`` (403 for any other known token)."""

    async def check(request: Request) -> Principal:
        principal = await caller(request)  # called, not a sub-dependency: one level less to solve
        if principal.role not in roles:
            raise HTTPException(status_code=403, detail=f"this needs the role {' or '.join(roles)}")
        return principal

    return check


class Page:
    """``?limit=`` (default 100, at most 1000) and ``?offset=``."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


def field_errors(errors: list[tuple[str, str]], kind: str = "admission_rule") -> JSONResponse:
    """A 422 in FastAPI's shape, one entry per field."""
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {"loc": ["body", field], "msg": message, "type": kind} for field, message in errors
            ]
        },
    )


def validation_error(errors: list[dict[str, Any]]) -> RequestValidationError:
    """A RequestValidationError for errors found after FastAPI's own parsing."""
    return RequestValidationError(errors)


def _printable(value: Any) -> Any:
    """``value`` with undecodable bytes, lone surrogates and non-finite numbers replaced, so
    JSON can carry it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _unstorable(value: Any) -> bool:
    """Whether ``value`` holds what Python's JSON parser accepts but strict JSON, the databases
    and the events cannot hold: a lone surrogate, NaN or an infinite number."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


class _StrictJSONRequest(Request):
    """Strict JSON bodies: an escaped lone surrogate (``"\\ud800"``), ``NaN``, ``Infinity`` or a
    number too large for a float is a JSON decode error (422), as no database or event could
    store it."""

    async def json(self) -> Any:
        value = await super().json()
        if _unstorable(value):
            body = (await self.body()).decode("utf-8", "replace")
            raise json.JSONDecodeError("lone surrogate, NaN or infinite number", body, 0)
        return value


class SafeRoute(APIRoute):
    """A route whose 422 answers also render what cannot be encoded as it came (undecodable
    bytes, lone surrogates): FastAPI's own handler echoes the input and fails with a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(_StrictJSONRequest(request.scope, request.receive))
            except RequestValidationError as error:
                errors = jsonable_encoder(_printable(error.errors()))
                return JSONResponse(status_code=422, content={"detail": errors})

        return guarded


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        too_large = False
        started = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            # FastAPI turns any error while reading the body into its own 400; once the limit
            # is hit, that answer is dropped and the 413 below goes out instead.
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, max_bytes: int) -> None:
    body = f'{{"detail":"request body larger than {max_bytes} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
