"""``tandem import``: register existing members from a CSV file through the registry's API.

The file has the columns of ``services/demo/members.csv`` (more are ignored) and is read by the
demo's own parser (:func:`services.demo.network.read_rows`), so the import and the demo map the
German tags the same way and fill in the same values, each marked estimated. Rows are sent to
``POST /api/members`` a few at a time; the answer of each line is kept: added (201), already
present (409), or rejected with the reasons (the registry's 422 messages, or why the row could
not be read). Re-running an import is safe: what is registered already is reported as present.

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
from typing import Literal, TextIO

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.demo.network import ESTIMATED_FIELDS, NetworkDataError, NetworkRow, read_rows
from services.registry.admission import admission_violations

__all__ = [
    "CONCURRENCY",
    "DEFAULT_URL",
    "ImportAborted",
    "ImportReport",
    "LineResult",
    "UnusableInput",
    "check_locally",
    "dry_run",
    "import_rows",
    "main",
    "read_file",
    "run",
    "send_row",
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
    #: Fields the import filled in itself (not from the file), marked estimated.
    estimated: tuple[str, ...] = ()
    #: Whether the import stated an ``exception_reason`` (population outside the rule's range).
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

    def estimated_counts(self) -> dict[str, int]:
        """Per field, on how many stored lines the import filled it in (file order of fields)."""
        counts: Counter[str] = Counter(f for r in self.stored for f in r.estimated)
        return {f: counts[f] for f in ESTIMATED_FIELDS if counts[f]}

    def looked_up_counts(self) -> dict[str, int]:
        """Per field, on how many added lines the registry looked it up."""
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
            counts = self.estimated_counts()
            filled = ", ".join(f"{f} {n}" for f, n in counts.items()) or "none"
            lines.append(
                f"Estimated by the import (not in the file), per field, of {stored} "
                f"{'valid' if self.dry_run else 'added'}: {filled}"
            )
            exceptions = sum(1 for r in self.stored if r.exception_stated)
            if exceptions:
                lines.append(
                    f"exception_reason stated by the import (population outside "
                    f"10,000–250,000): {exceptions}"
                )
            looked_up = self.looked_up_counts()
            if looked_up:
                lines.append(
                    "Looked up by the registry (GeoNames), per field: "
                    + ", ".join(f"{f} {n}" for f, n in looked_up.items())
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


def read_file(path: Path, newcomer_year: int | None = None) -> list[NetworkRow]:
    """The rows of ``path`` (UTF-8, a byte-order mark is fine). Members that joined in
    ``newcomer_year`` or later seek a tandem; ``None``: none do.
    Raises :class:`UnusableInput` saying what is wrong with the file."""
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
        return read_rows(text, source=path.name, newcomer_year=newcomer_year)
    except NetworkDataError as error:
        raise UnusableInput(str(error)) from None


def _stored(row: NetworkRow, status: Status, looked_up: Sequence[str] = ()) -> LineResult:
    """The result of a line the registry took (or, in a dry run, would take)."""
    assert row.member is not None
    return LineResult(
        row.line,
        row.name,
        row.member.id,
        status,
        estimated=row.member.estimated,
        exception_stated=bool(row.member.registration.exception_reason),
        looked_up=tuple(looked_up),
    )


def check_locally(row: NetworkRow) -> LineResult:
    """The line's result without the registry: rejected if the row cannot be read or breaks an
    admission rule, else ``valid``."""
    if row.member is None:
        return LineResult(row.line, row.name, None, "rejected", (row.problem or "unreadable",))
    problems = tuple(
        f"{v.field}: {v.message}" for v in admission_violations(row.member.registration)
    )
    if problems:
        return LineResult(row.line, row.name, row.member.id, "rejected", problems)
    return _stored(row, "valid")


def _messages(response: httpx.Response) -> tuple[str, ...]:
    """The registry's error messages: ``"field: message"`` per 422 entry, else the detail."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        messages = []
        for entry in detail:
            if not isinstance(entry, dict):
                messages.append(str(entry))
                continue
            loc = [str(part) for part in entry.get("loc", []) if part != "body"]
            where = ".".join(loc)
            messages.append(f"{where}: {entry.get('msg')}" if where else str(entry.get("msg")))
        return tuple(messages) or (f"HTTP {response.status_code}",)
    if detail:
        return (str(detail),)
    return (f"HTTP {response.status_code}: {response.text[:200]}".rstrip(": "),)


async def send_row(client: httpx.AsyncClient, row: NetworkRow) -> LineResult:
    """Register one row (rows that cannot be read are rejected without a request).
    Raises :class:`ImportAborted` if the registry cannot be reached or refuses the token."""
    if row.member is None:
        return check_locally(row)
    body = row.member.registration.model_dump(mode="json", exclude_none=True)
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
    if response.status_code == 201:
        try:
            looked_up = response.json().get("looked_up") or ()
        except (ValueError, AttributeError):
            looked_up = ()
        return _stored(row, "added", [str(f) for f in looked_up])
    if response.status_code == 409:
        return LineResult(row.line, row.name, row.member.id, "present")
    return LineResult(row.line, row.name, row.member.id, "rejected", _messages(response))


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def import_rows(
    client: httpx.AsyncClient,
    rows: Sequence[NetworkRow],
    *,
    source: str = "",
    concurrency: int = CONCURRENCY,
    on_result: Callable[[LineResult], None] | None = None,
) -> ImportReport:
    """Send ``rows`` through ``client`` (base URL and token set), ``concurrency`` at a time.
    ``on_result`` is called for each line as it is answered. If the registry becomes
    unreachable or refuses the token, the rest is not sent and the report says why."""
    gate = asyncio.Semaphore(max(1, concurrency))
    results: dict[int, LineResult] = {}

    async def one(row: NetworkRow) -> None:
        async with gate:
            result = await send_row(client, row)
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


def _note_unmapped(report: ImportReport, rows: Sequence[NetworkRow]) -> None:
    for row in rows:
        if row.member is not None:
            for tag in row.member.unmapped_tags:
                report.unmapped_tags.setdefault(tag, []).append(row.line)


def dry_run(rows: Sequence[NetworkRow], source: str = "") -> ImportReport:
    """Check every row locally (reading, model, admission rules); nothing is sent."""
    report = ImportReport(source=source, results=[check_locally(r) for r in rows], dry_run=True)
    _note_unmapped(report, rows)
    return report


async def run(
    path: Path,
    *,
    url: str = DEFAULT_URL,
    token: str | None = None,
    newcomer_year: int | None = None,
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
        return dry_run(rows, path.name)
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
                client, rows, source=path.name, concurrency=concurrency, on_result=advance
            )


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
                path, url=url, token=token, newcomer_year=newcomer_year, dry=dry,
                concurrency=concurrency, err=console,
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
