"""``tandem import``: register existing members from a CSV file through the registry's API.

A client of the API that lives with the command line. The file is read by
:mod:`services.member_csv` (the reader the demo uses too) and each line sent to
``POST /api/members`` as it stands: the import never fills in a value. A missing population or
missing coordinates are looked up by the registry in GeoNames (reported as looked up); a line
that lacks what admission needs comes back with every broken rule named. With
``--exception-reason TEXT`` a line refused only for admission rules is sent once more with that
text, verbatim, as its ``exception_reason``; nothing else changes. Lines are sent a few at a
time; each line's answer is kept: added (201), already present (409), or rejected with the
reasons (the registry's 422 messages, or the cells that cannot be read). Re-running an import
is safe: what is registered already is reported as present.

Exit codes: 0 all lines added or present, 1 some line rejected, 2 unusable input (no file,
missing columns, no token) or the registry unreachable or refusing the token.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.member import MemberRegistration
from services.member_csv import MemberFileError, MemberLine, read_lines
from services.registry.admission import AdmissionRefused, body_violations, check

__all__ = [
    "CONCURRENCY",
    "DEFAULT_URL",
    "ImportAborted",
    "ImportLine",
    "ImportReport",
    "LineResult",
    "UnusableInput",
    "body_of",
    "check_locally",
    "dry_run",
    "import_rows",
    "local_problems",
    "main",
    "read_file",
    "run",
    "send_line",
]

DEFAULT_URL = "http://127.0.0.1:8000"
#: Requests in flight at once.
CONCURRENCY = 4

Status = Literal["added", "present", "rejected", "valid"]
_STATUS_LABELS: dict[Status, str] = {
    "added": "added",
    "present": "already present",
    "rejected": "rejected",
    "valid": "valid (dry run, not sent)",
}


class UnusableInput(Exception):
    """The file cannot be imported at all (missing, unreadable, wrong columns)."""


class ImportAborted(Exception):
    """The registry cannot be reached or refuses the token: nothing more is sent."""


@dataclass(frozen=True)
class LineResult:
    """What became of one line of the file."""

    line: int
    name: str
    member_id: str | None
    status: Status
    reasons: tuple[str, ...] = ()
    #: Whether ``--exception-reason`` was sent for this line (it broke admission rules only).
    exception_stated: bool = False
    #: Fields the registry looked up in its gazetteer (from the 201 answer).
    looked_up: tuple[str, ...] = ()


@dataclass
class ImportReport:
    """Every line's result, in file order, and whether the import stopped early."""

    source: str
    results: list[LineResult]
    dry_run: bool = False
    #: Why the import stopped before every line was sent (``None``: it did not).
    aborted: str | None = None
    #: Lines not sent because the import stopped.
    not_sent: list[int] = field(default_factory=list)
    #: Tags of the file that the topic mapping does not know (ignored), with their lines.
    unmapped_tags: dict[str, list[int]] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        """How many lines ended with ``status``."""
        return sum(1 for r in self.results if r.status == status)

    @property
    def stored(self) -> list[LineResult]:
        """The lines this import registered (or, in a dry run, would register)."""
        return [r for r in self.results if r.status in ("added", "valid")]

    def looked_up_counts(self) -> dict[str, int]:
        """Per field, on how many added (dry run: valid) lines the registry looked it up."""
        return dict(Counter(f for r in self.stored for f in r.looked_up))

    @property
    def exit_code(self) -> int:
        """2 if the import stopped early, 1 if a line was rejected, else 0."""
        if self.aborted is not None:
            return 2
        return 1 if self.count("rejected") else 0

    def summary_lines(self, url: str | None = None) -> list[str]:
        """The summary as plain text lines."""
        target = " (nothing sent)" if self.dry_run else f" into {url}" if url else ""
        head = "Dry run of" if self.dry_run else "Import of"
        lines = [f"{head} {self.source}{target}: {len(self.results) + len(self.not_sent)} lines"]
        statuses: tuple[Status, ...] = (
            ("valid", "rejected") if self.dry_run else ("added", "present", "rejected")
        )
        width = max(len(_STATUS_LABELS[s]) for s in statuses) + 1
        for status in statuses:
            lines.append(f"  {_STATUS_LABELS[status] + ':':<{width}} {self.count(status)}")
        if self.not_sent:
            lines.append(f"  {'not sent:':<{width}} {len(self.not_sent)}")
        rejected = [r for r in self.results if r.status == "rejected"]
        if rejected:
            lines.append("Rejected lines:")
            for r in rejected:
                name = f" ({r.name})" if r.name else ""
                lines.append(f"  line {r.line}{name}: {'; '.join(r.reasons)}")
        stored = len(self.stored)
        if stored:
            lines.append(
                f"Filled in by the import: nothing (the {stored} "
                f"{'valid' if self.dry_run else 'added'} lines hold the file's values; a "
                "blank seeks_tandem is sent as --newcomer-year says, false without it)"
            )
            exceptions = [r.line for r in self.stored if r.exception_stated]
            if exceptions:
                lines.append(
                    f"exception_reason from --exception-reason (admission rules broken): "
                    f"{len(exceptions)} (line{'s' if len(exceptions) > 1 else ''} "
                    f"{', '.join(map(str, exceptions))})"
                )
            looked_up = self.looked_up_counts()
            if looked_up:
                lines.append(
                    f"{'To be looked up' if self.dry_run else 'Looked up'} by the registry "
                    "(GeoNames), per field: " + ", ".join(f"{f} {n}" for f, n in looked_up.items())
                )
        if self.unmapped_tags:
            tags = ", ".join(
                f"{tag} (line{'s' if len(at) > 1 else ''} {', '.join(map(str, at))})"
                for tag, at in self.unmapped_tags.items()
            )
            lines.append(f"Tags without a topic (ignored): {tags}")
        if self.aborted is not None:
            lines.append(f"Stopped: {self.aborted}")
            if self.not_sent:
                lines.append(
                    "Run the import again once the registry answers: lines already "
                    "registered are reported as already present."
                )
        return lines


@dataclass(frozen=True)
class ImportLine:
    """One line of the file and the body the import sends for it."""

    source: MemberLine
    #: ``POST /api/members`` body: only what the line states (``seeks_tandem`` set explicitly
    #: from the column or ``--newcomer-year``; the ``topics`` column as the member's strengths,
    #: or its interests if it seeks a tandem).
    body: dict[str, Any]

    @property
    def line(self) -> int:
        """The line number in the file."""
        return self.source.line

    @property
    def name(self) -> str:
        """The name as the line gives it."""
        return self.source.name

    @property
    def member_id(self) -> str | None:
        """The member id the line states or its name yields."""
        return self.source.member_id


def body_of(line: MemberLine, newcomer_year: int | None = None) -> dict[str, Any]:
    """What the import sends for ``line``: the values it states, nothing filled in.
    ``seeks_tandem`` (which the import sets explicitly, as the contract says) is the column's
    value, else whether the line joined in ``newcomer_year`` or later (``None``: false)."""
    body = dict(line.values)
    if "seeks_tandem" not in body:
        body["seeks_tandem"] = bool(
            line.join_year is not None and newcomer_year is not None
            and line.join_year >= newcomer_year
        )  # fmt: skip
    if line.topics:
        own = "interests" if body["seeks_tandem"] else "strengths"
        body[own] = list(dict.fromkeys([*body.get(own, []), *line.topics]))
    return body


def read_file(path: Path, newcomer_year: int | None = None) -> list[ImportLine]:
    """The lines of ``path`` (UTF-8, a byte-order mark is fine) with their bodies. Members
    that joined in ``newcomer_year`` or later seek a tandem unless a ``seeks_tandem`` column
    says otherwise; ``None``: none do. Raises :class:`UnusableInput` saying what is wrong with
    the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UnusableInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UnusableInput(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as error:
        raise UnusableInput(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise UnusableInput(f"{path}: cannot be read ({error.strerror})") from None
    try:
        lines = read_lines(text, source=path.name)
    except MemberFileError as error:
        raise UnusableInput(str(error)) from None
    return [ImportLine(line, body_of(line, newcomer_year)) for line in lines]


#: A problem as ``(field, message, kind)``; kind as the registry's 422 ``type``.
Problem = tuple[str, str, str]


def local_problems(body: dict[str, Any]) -> list[Problem]:
    """What the registry would answer for ``body``, found here: the model's validation, then
    the admission (:func:`services.registry.admission.check`, GeoNames look-up included).
    Messages as ``"field: message"`` like the registry's 422."""
    return _local(body)[0]


def _local(body: dict[str, Any]) -> tuple[list[Problem], tuple[str, ...]]:
    """:func:`local_problems`, and the fields GeoNames would fill in."""
    try:
        member = MemberRegistration.model_validate(body)
    except ValidationError as error:
        problems: list[Problem] = [
            (str(e["loc"][0]) if e["loc"] else "", _where(e["loc"], e["msg"]), e["type"])
            for e in error.errors(include_url=False)
        ]
        rules = body_violations(body, {field for field, _, _ in problems if field})
        return problems + [(v.field, str(v), v.kind) for v in rules], ()
    try:
        admission = check(member)
    except AdmissionRefused as refused:
        return [(v.field, str(v), v.kind) for v in refused.problems], ()
    return [], admission.looked_up


def _where(loc: Sequence[Any], message: str) -> str:
    where = ".".join(str(part) for part in loc if part != "body")
    return f"{where}: {message}" if where else message


def _unreadable(line: ImportLine) -> LineResult:
    """A line with cells that cannot be read: those, and what else is wrong with the rest."""
    bad = {field for field, _ in line.source.problems}
    reasons = [message for _, message in line.source.problems]
    reasons += [m for f, m, _ in local_problems(line.body) if f not in bad]
    return LineResult(line.line, line.name, line.member_id, "rejected", tuple(reasons))


def check_locally(line: ImportLine, exception_reason: str | None = None) -> LineResult:
    """The line's result without the registry: rejected naming every problem, else ``valid``
    (also when it breaks admission rules only and ``exception_reason`` is given)."""
    if line.source.problems:
        return _unreadable(line)
    problems, looked_up = _local(line.body)
    if not problems:
        return LineResult(line.line, line.name, line.member_id, "valid", looked_up=looked_up)
    if exception_reason and _exception_applies(line.body, [kind for _, _, kind in problems]):
        with_reason = {**line.body, "exception_reason": exception_reason}
        lifted, looked_up = _local(with_reason)
        if not lifted:
            return LineResult(
                line.line, line.name, line.member_id, "valid",
                exception_stated=True, looked_up=looked_up,
            )  # fmt: skip
    reasons = tuple(message for _, message, _ in problems)
    return LineResult(line.line, line.name, line.member_id, "rejected", reasons)


def _exception_applies(body: dict[str, Any], kinds: Sequence[str]) -> bool:
    """Whether ``--exception-reason`` is for this refusal: only admission rules were broken
    and the line states no reason of its own."""
    return not body.get("exception_reason") and all(k == "admission_rule" for k in kinds)


def _answer(response: httpx.Response) -> list[tuple[str, str]]:
    """The registry's error: ``(message, type)`` per 422 entry (message as ``"field: msg"``),
    else the detail."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        entries: list[tuple[str, str]] = []
        for entry in detail:
            if not isinstance(entry, dict):
                entries.append((str(entry), ""))
                continue
            message = _where(entry.get("loc", []), str(entry.get("msg")))
            entries.append((message, str(entry.get("type", ""))))
        return entries or [(f"HTTP {response.status_code}", "")]
    if detail:
        return [(str(detail), "")]
    return [(f"HTTP {response.status_code}: {response.text[:200]}".rstrip(": "), "")]


def _messages(response: httpx.Response) -> tuple[str, ...]:
    return tuple(message for message, _ in _answer(response))


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    try:
        response = await client.post("/api/members", json=body)
    except httpx.TransportError as error:
        raise ImportAborted(
            f"lost the registry at {client.base_url} ({_describe(error)})"
        ) from None
    if response.status_code in (401, 403):
        raise ImportAborted(
            f"the registry refused the token ({response.status_code}: "
            f"{'; '.join(_messages(response))}); a platform or staff token is needed"
        )
    return response


async def send_line(
    client: httpx.AsyncClient, line: ImportLine, exception_reason: str | None = None
) -> LineResult:
    """Register one line (lines with cells that cannot be read are rejected without a
    request). A line refused for admission rules only is sent once more with
    ``exception_reason``, if given. Raises :class:`ImportAborted` if the registry cannot be
    reached or refuses the token."""
    if line.source.problems:
        return _unreadable(line)
    response = await _post(client, line.body)
    stated = False
    if (
        response.status_code == 422
        and exception_reason
        and _exception_applies(line.body, [kind for _, kind in _answer(response)])
    ):
        response = await _post(client, {**line.body, "exception_reason": exception_reason})
        stated = True
    if response.status_code == 201:
        try:
            looked_up = response.json().get("looked_up") or ()
        except (ValueError, AttributeError):
            looked_up = ()
        return LineResult(
            line.line, line.name, line.member_id, "added",
            exception_stated=stated, looked_up=tuple(str(f) for f in looked_up),
        )  # fmt: skip
    if response.status_code == 409:
        return LineResult(line.line, line.name, line.member_id, "present")
    return LineResult(line.line, line.name, line.member_id, "rejected", _messages(response))


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def import_rows(
    client: httpx.AsyncClient,
    rows: Sequence[ImportLine],
    *,
    source: str = "",
    concurrency: int = CONCURRENCY,
    exception_reason: str | None = None,
    on_result: Callable[[LineResult], None] | None = None,
) -> ImportReport:
    """Send ``rows`` through ``client`` (base URL and token set), ``concurrency`` at a time.
    ``exception_reason``: sent, verbatim, for lines refused for admission rules only.
    ``on_result`` is called for each line as it is answered. If the registry becomes
    unreachable or refuses the token, the rest is not sent and the report says why."""
    gate = asyncio.Semaphore(max(1, concurrency))
    results: dict[int, LineResult] = {}

    async def one(row: ImportLine) -> None:
        async with gate:
            result = await send_line(client, row, exception_reason)
        results[row.line] = result
        if on_result is not None:
            on_result(result)

    aborted: str | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for row in rows:
                group.create_task(one(row))
    except* ImportAborted as errors:
        aborted = str(errors.exceptions[0])
    report = ImportReport(
        source=source,
        results=[results[r.line] for r in rows if r.line in results],
        aborted=aborted,
        not_sent=[r.line for r in rows if r.line not in results],
    )
    _note_unmapped(report, rows)
    return report


def _note_unmapped(report: ImportReport, rows: Sequence[ImportLine]) -> None:
    for row in rows:
        for tag in row.source.unmapped_tags:
            report.unmapped_tags.setdefault(tag, []).append(row.line)


def dry_run(
    rows: Sequence[ImportLine], source: str = "", exception_reason: str | None = None
) -> ImportReport:
    """Check every line locally (reading, model, GeoNames, admission rules); nothing is sent."""
    report = ImportReport(
        source=source,
        results=[check_locally(r, exception_reason) for r in rows],
        dry_run=True,
    )
    _note_unmapped(report, rows)
    return report


async def run(
    path: Path,
    *,
    url: str = DEFAULT_URL,
    token: str | None = None,
    newcomer_year: int | None = None,
    exception_reason: str | None = None,
    dry: bool = False,
    concurrency: int = CONCURRENCY,
    err: Console | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImportReport:
    """Read ``path`` and import it into the registry at ``url`` with a progress bar on
    ``err``. Raises :class:`UnusableInput` or :class:`ImportAborted` (before anything is
    sent); later failures end up in the report."""
    rows = read_file(path, newcomer_year)
    if dry:
        return await asyncio.to_thread(dry_run, rows, path.name, exception_reason)
    if not token:
        raise UnusableInput("no token: give --token or set TANDEM_TOKEN (a platform token)")
    console = err or Console(stderr=True)
    try:
        client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            transport=transport,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as error:
        raise UnusableInput(f"invalid --url {url!r} ({error})") from None
    async with client:
        await _check_reachable(client)
        progress = Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            task = progress.add_task("import", total=len(rows), last="")

            def advance(result: LineResult) -> None:
                progress.update(task, advance=1, last=f"line {result.line}: {result.status}")

            return await import_rows(
                client, rows, source=path.name, concurrency=concurrency,
                exception_reason=exception_reason, on_result=advance,
            )  # fmt: skip


async def _check_reachable(client: httpx.AsyncClient) -> None:
    try:
        response = await client.get("/health", timeout=10)
    except httpx.UnsupportedProtocol:
        raise UnusableInput(
            f"invalid --url {str(client.base_url)!r}: it needs http:// or https://"
        ) from None
    except httpx.TransportError as error:
        raise ImportAborted(
            f"cannot reach the registry at {client.base_url} ({_describe(error)}); "
            "is `tandem up` running there? (--url or TANDEM_URL)"
        ) from None
    if response.status_code != 200:
        raise ImportAborted(
            f"{client.base_url} does not answer like a Tandem registry "
            f"(GET /health: HTTP {response.status_code})"
        )


def main(
    path: Path,
    *,
    url: str = DEFAULT_URL,
    token: str | None = None,
    newcomer_year: int | None = None,
    exception_reason: str | None = None,
    dry: bool = False,
    concurrency: int = CONCURRENCY,
    out: TextIO | None = None,
    err: Console | None = None,
) -> int:
    """The ``tandem import`` command: summary on ``out``, progress and errors on ``err``;
    returns the exit code."""
    stdout = out or sys.stdout
    console = err or Console(stderr=True)
    try:
        report = asyncio.run(
            run(
                path, url=url, token=token, newcomer_year=newcomer_year,
                exception_reason=exception_reason, dry=dry, concurrency=concurrency, err=console,
            )
        )  # fmt: skip
    except UnusableInput as error:
        console.print(f"[red]cannot import:[/] {error}", highlight=False)
        return 2
    except ImportAborted as error:
        console.print(f"[red]import failed:[/] {error}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: run the import again to finish it (lines already "
                      "registered are reported as already present)")  # fmt: skip
        return 130
    for line in report.summary_lines(url):
        print(line, file=stdout)
    return report.exit_code
