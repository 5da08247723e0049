"""Which HTTP status each domain and service error answers, written once for the matcher's API,
the staff page and the registry's API.

``STATUS`` is the mapping. The matcher's API and the staff page raise the errors from their
routes and let their route class (:func:`error_route`) answer them, each in its own words
(``API_DETAILS``, ``STAFF_DETAILS``); the registry's routes name the member in their texts and
build the answer with :func:`http_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import HTTPException, Request, Response

from services.infra.http import SafeRoute
from services.matcher.decisions import NotAnAlternative, ProposalNotFound
from services.matcher.domain.lifecycle import BlankReason, IllegalTransition, PairUnavailable
from services.matcher.service import UnknownMember
from services.registry.store import DuplicateMember, MemberLeft, MemberNotFound

#: The one mapping of errors to HTTP statuses.
STATUS: Mapping[type[Exception], int] = {
    ProposalNotFound: 404,
    UnknownMember: 404,
    MemberNotFound: 404,
    IllegalTransition: 409,
    PairUnavailable: 409,
    DuplicateMember: 409,
    MemberLeft: 409,
    NotAnAlternative: 422,
    BlankReason: 422,
}

#: What an answer says about an error: its ``detail``.
Detail = Callable[[Exception], Any]


def _field(*loc: str) -> Detail:
    """A 422 in FastAPI's shape, naming the field."""
    return lambda error: [{"loc": list(loc), "msg": str(error), "type": "value_error"}]


#: The matcher API's texts (``ProposalNotFound`` carries the proposal id).
API_DETAILS: Mapping[type[Exception], Detail] = {
    ProposalNotFound: lambda error: f"no proposal {error.args[0]!r}",
    UnknownMember: str,
    IllegalTransition: str,
    PairUnavailable: str,
    NotAnAlternative: _field("body", "mentor_id"),
    BlankReason: _field("body", "reason"),
}

#: The staff page's texts, in German.
STAFF_DETAILS: Mapping[type[Exception], Detail] = {
    ProposalNotFound: lambda _: "Vorschlag nicht gefunden.",
    IllegalTransition: lambda error: f"Nicht möglich: {error}",
    PairUnavailable: lambda error: f"Nicht möglich: {error}",
    NotAnAlternative: str,
    BlankReason: str,
}


def status_of(error: Exception) -> int:
    """The HTTP status ``error`` answers (the first entry of ``STATUS`` it is an instance of)."""
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return status
    raise LookupError(f"no HTTP status for {type(error).__name__}")


def http_error(error: Exception, detail: Any) -> HTTPException:
    """The answer to ``error``: its status from ``STATUS`` with ``detail``."""
    return HTTPException(status_code=status_of(error), detail=detail)


def error_route(details: Mapping[type[Exception], Detail]) -> type[SafeRoute]:
    """A route class that answers the errors in ``details`` with their status from ``STATUS``
    and the text ``details`` gives (any other error propagates)."""
    known = tuple(details)
    missing = [kind.__name__ for kind in known if kind not in STATUS]
    if missing:
        raise ValueError(f"no HTTP status for {', '.join(missing)}")

    class ErrorRoute(SafeRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def answering(request: Request) -> Response:
                try:
                    return await handler(request)
                except known as error:
                    detail = next(d for k, d in details.items() if isinstance(error, k))
                    raise http_error(error, detail(error)) from error

            return answering

    return ErrorRoute


#: The route classes of the matcher's API and of the staff page.
ApiRoute = error_route(API_DETAILS)
StaffRoute = error_route(STAFF_DETAILS)
