"""HTTP edge shared by the services: authentication, paging, body limits, error shapes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.infra.auth import Principal, Role, TokenBook


def caller(request: Request) -> Principal:
    """The authenticated caller; 401 without a known bearer token."""
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


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that admits only ``roles`` (403 for any other known token)."""

    def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
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

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
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
