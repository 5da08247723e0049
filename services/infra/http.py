"""HTTP edge shared by the services: authentication, paging, body limits, error shapes."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.infra.auth import Principal, Role, TokenBook
from services.infra.db import is_connection_loss

log = logging.getLogger(__name__)


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


#: The largest ``?offset=``: far beyond any list of a network of cities, and a number every
#: database takes (a 21-digit offset overflowed their 64-bit integers: a 500).
MAX_OFFSET = 1_000_000


class Page:
    """``?limit=`` (default 100, at most 1000) and ``?offset=`` (at most :data:`MAX_OFFSET`)."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset

    def of(self, items: list[Any]) -> dict[str, Any]:
        """This page of a whole (short) list, in the list endpoints' shape."""
        return {"items": items[self.offset : self.offset + self.limit], "total": len(items)}


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


#: Limits of a JSON body: no request of the API nests deeper than a few levels or needs an
#: integer longer than a 64-bit one; Python's parser would raise RecursionError or ValueError
#: on 5,000 of either, which FastAPI answers with a bare 400.
MAX_JSON_DEPTH = 32
MAX_INTEGER_DIGITS = 20


class RefusedInput(Exception):
    """A body or form field the API does not take, as one FastAPI-shaped error."""

    def __init__(self, loc: list[str | int], msg: str, kind: str) -> None:
        super().__init__(msg)
        self.error = {"loc": _printable(loc), "msg": msg, "type": kind}

    def answer(self) -> HTTPException:
        return HTTPException(status_code=422, detail=[self.error])


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise RefusedInput(
            ["body"], f"an integer longer than {MAX_INTEGER_DIGITS} digits", "number_too_large"
        )
    return int(digits)


def _nul(loc: list[str | int]) -> RefusedInput:
    return RefusedInput(loc, "must not contain the NUL character (U+0000)", "string_nul")


def _check_tree(value: Any) -> None:
    """Raise :class:`RefusedInput` for nesting deeper than :data:`MAX_JSON_DEPTH` or a string (or
    key) holding U+0000, which PostgreSQL cannot store."""
    stack: list[tuple[Any, list[str | int]]] = [(value, ["body"])]
    while stack:
        item, loc = stack.pop()  # a container's ``loc`` is as long as its depth (body: 1)
        if isinstance(item, dict | list) and len(loc) > MAX_JSON_DEPTH:
            raise RefusedInput(["body"], f"nested deeper than {MAX_JSON_DEPTH} levels", "too_deep")
        if isinstance(item, str):
            if "\x00" in item:
                raise _nul(loc)
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    raise _nul([*loc, key.replace("\x00", "\\u0000")])
                stack.append((child, [*loc, key]))
        elif isinstance(item, list):
            stack.extend((child, [*loc, i]) for i, child in enumerate(item))


def _plain(body: bytes) -> bool:
    """Whether a body that parsed (with only finite numbers) surely holds neither U+0000, nor a
    lone surrogate, nor nesting deeper than :data:`MAX_JSON_DEPTH`: both strings need a
    ``\\u`` escape to get there (the parser refuses raw control characters, and UTF-8 has no
    surrogates), nesting needs as many ``[`` or ``{``, and a body in UTF-16 or UTF-32 (which
    Python's parser also reads) has zero bytes, so it is never plain."""
    return (
        b"\\u" not in body
        and b"\x00" not in body
        and body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH
    )


def strict_json(body: bytes) -> Any:
    """``body`` parsed as the API takes JSON. Raises :class:`json.JSONDecodeError` for what is
    not JSON or what strict JSON, the databases and the events cannot hold (a lone surrogate,
    ``NaN``, an infinite number), and :class:`RefusedInput` for nesting deeper than
    :data:`MAX_JSON_DEPTH`, integers longer than :data:`MAX_INTEGER_DIGITS` digits and U+0000."""
    unusual: list[str] = []  # non-finite numbers the parser met

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            unusual.append(text)
        return value

    def constant(text: str) -> float:
        unusual.append(text)
        return float(text)

    try:
        value = json.loads(
            body, parse_int=_bounded_int, parse_float=number, parse_constant=constant
        )
    except RecursionError:
        raise RefusedInput(
            ["body"], f"nested deeper than {MAX_JSON_DEPTH} levels", "too_deep"
        ) from None
    except UnicodeDecodeError as error:
        text = body.decode("utf-8", "replace")
        raise json.JSONDecodeError(f"not UTF-8: {error.reason}", text, error.start) from None
    if not unusual and _plain(body):
        return value  # nothing below can find anything: no walk over the tree
    _check_tree(value)  # first: it bounds the depth the recursive check below meets
    if _unstorable(value):
        text = body.decode("utf-8", "replace")
        raise json.JSONDecodeError("lone surrogate, NaN or infinite number", text, 0)
    return value


class _StrictJSONRequest(Request):
    """Strict JSON bodies (see :func:`strict_json`), and form fields without U+0000."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strict_json(await self.body())
            except RefusedInput as refused:
                raise refused.answer() from None
        return self._json

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        form = await super()._get_form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )
        for key, value in form.multi_items():
            if "\x00" in key or (isinstance(value, str) and "\x00" in value):
                raise _nul(["body", key.replace("\x00", "\\u0000")]).answer()
        return form


class SafeRoute(APIRoute):
    """A route whose 422 answers also render what cannot be encoded as it came (undecodable
    bytes, lone surrogates): FastAPI's own handler echoes the input and fails with a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            # A read whose database connection was lost (the server dropped it) is tried once
            # more on a fresh one; a write is not, it is answered 503 (see ``database_away``).
            retries = 1 if request.method in {"GET", "HEAD"} else 0
            while True:
                try:
                    return await handler(_StrictJSONRequest(request.scope, request.receive))
                except RequestValidationError as error:
                    errors = jsonable_encoder(_printable(error.errors()))
                    return JSONResponse(status_code=422, content={"detail": errors})
                except Exception as error:
                    if retries == 0 or not is_connection_loss(error):
                        raise
                    retries -= 1
                    log.warning("database connection lost during a read; trying once more")

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
