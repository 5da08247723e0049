"""The ``tandem`` command."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from services.infra.settings import CommonSettings
from services.registry.settings import RegistrySettings
from services.runtime import Node, ServiceName

app = typer.Typer(
    help="Tandem: Tandem-Städte and collegial advice for the Engagierte Stadt network.",
    no_args_is_help=True,
    add_completion=False,
)
registry_app = typer.Typer(help="The registry alone (what docker-compose runs).")
app.add_typer(registry_app, name="registry")
console = Console(stderr=True)

BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Kafka HOST:PORT; unset: an embedded broker.")
]
HostOpt = Annotated[str | None, typer.Option("--host", help="HTTP listen address.")]
PortOpt = Annotated[int | None, typer.Option("--port", help="HTTP port.")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Directory for SQLite databases.")]


def _settings(
    broker: str | None, host: str | None, port: int | None, data: Path | None
) -> CommonSettings:
    overrides: dict[str, Any] = {
        k: v for k, v in {"broker": broker, "host": host, "port": port, "data": data}.items()
        if v is not None
    }  # fmt: skip
    try:
        return CommonSettings.model_validate(overrides)
    except ValidationError as error:
        raise _invalid_configuration(error) from None


def _invalid_configuration(error: ValidationError) -> typer.Exit:
    """One line per problem, naming the variable but never echoing its value (it may be a
    token or a password); the exit code for unusable input."""
    for problem in error.errors(include_input=False, include_url=False):
        variable = "TANDEM_" + "_".join(str(part) for part in problem["loc"]).upper()
        console.print(f"[red]invalid configuration:[/] {variable}: {problem['msg']}")
    return typer.Exit(2)


def _configure_logging(level: str) -> None:
    from services.infra.logs import configure_logging

    configure_logging(level)


def _serve(settings: CommonSettings, services: tuple[ServiceName, ...], seed: bool = False) -> None:
    _configure_logging(settings.log_level)

    async def main() -> None:
        node = Node(
            settings,
            services=services,
            embed_broker="registry" in services and "matcher" in services,
        )
        await node.start()
        if seed and node.registry is not None:
            from services.demo.seed import seed_registry

            added = await seed_registry(node.registry)
            console.print(f"seeded {added} members" if added else "registry not empty: no seed")
        # What start-up built (modules, models, compiled statements) lives as long as the
        # process. Frozen, it is no longer walked by every full collection of the cyclic garbage
        # collector, which a burst of consumed records triggers every few thousand records
        # (ingesting 10,000 joins in the matcher, four such passes took about 1 s of CPU).
        gc.collect()
        gc.freeze()
        console.print(f"[bold]Tandem[/] listening on [link]{node.url}[/]")
        if node.broker is not None:
            console.print(f"embedded broker at {node.broker.bootstrap} (memory only)")
        if node.tokens_text:
            console.print(f"tokens (kept in {settings.data / 'tokens'}):")
            for entry in node.tokens_text.split(","):
                console.print(f"  {entry}")
        try:
            await node.wait()
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except ValidationError as error:  # a service's own options (e.g. TANDEM_WEIGHTS)
        raise _invalid_configuration(error) from None


@app.command()
def up(
    broker: BrokerOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    data: DataOpt = None,
    seed: Annotated[
        bool, typer.Option("--seed", help="Load the bundled network on first start.")
    ] = False,
) -> None:
    """The whole system on one machine: broker, registry, matcher, API and staff page."""
    _serve(_settings(broker, host, port, data), ("registry", "matcher"), seed=seed)


@registry_app.callback(invoke_without_command=True)
def registry(
    ctx: typer.Context,
    broker: BrokerOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    data: DataOpt = None,
) -> None:
    """Run the registry alone."""
    ctx.obj = _settings(broker, host, port, data)
    if ctx.invoked_subcommand is None:
        if ctx.obj.broker is None:
            console.print("[red]the registry alone needs --broker or TANDEM_BROKER[/]")
            raise typer.Exit(2)
        _serve(ctx.obj, ("registry",))


@registry_app.command()
def republish(ctx: typer.Context) -> None:
    """Queue ``city.joined`` again for every member (idempotent for the matcher), to rebuild a
    fresh broker's topics. The running registry's relay publishes them."""
    from services.infra.db import make_engine, migrate
    from services.registry import store
    from services.registry.service import MIGRATIONS

    settings = RegistrySettings.model_validate(ctx.obj.model_dump())

    async def main() -> int:
        engine = make_engine(settings.database_for("registry"))
        try:
            await migrate(engine, MIGRATIONS, "alembic_version_registry")
            return await store.republish(engine)
        finally:
            await engine.dispose()

    count = asyncio.run(main())
    console.print(f"queued city.joined for {count} members; the registry's relay publishes them")


@app.command()
def matcher(
    broker: BrokerOpt = None, host: HostOpt = None, port: PortOpt = None, data: DataOpt = None
) -> None:
    """Run the matcher alone."""
    settings = _settings(broker, host, port, data)
    if settings.broker is None:
        console.print("[red]the matcher alone needs --broker or TANDEM_BROKER[/]")
        raise typer.Exit(2)
    _serve(settings, ("matcher",))


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README's configuration table.")
    ] = False,
) -> None:
    """Print the effective configuration (from TANDEM_* variables), secrets masked."""
    from rich.table import Table

    from services.config import config_rows, config_table_markdown, effective_configuration

    if markdown:
        typer.echo(config_table_markdown(), nl=False)
        return
    try:
        values = effective_configuration()
    except ValueError as error:
        console.print(f"[red]invalid configuration:[/] {error}")
        raise typer.Exit(2) from error
    table = Table(title="Tandem configuration")
    table.add_column("variable")
    table.add_column("value")
    table.add_column("service")
    for variable, _default, scope, _meaning in config_rows():
        table.add_row(variable, values.get(variable, "see TANDEM_EXTRA_TOPICS"), scope)
    Console().print(table)


@app.command()
def demo(
    cohort: Annotated[
        int | None, typer.Option("--cohort", help="The cohort to show (default: the newest).")
    ] = None,
    interactive: Annotated[
        bool, typer.Option("--interactive", help="Decide the shown cohort's proposals by hand.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each step.")] = 60,
) -> None:
    """The main job: the real network's history on an embedded broker, cohort by cohort, with
    the proposals for the newest cohort and one collegial-advice answer."""
    from services.demo.run import run_demo

    _configure_logging("WARNING")
    code = asyncio.run(run_demo(cohort=cohort, timeout=timeout, interactive=interactive))
    raise typer.Exit(code)


@app.command("import")
def import_members(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with the columns of services/demo/members.csv plus contact_name, "
            "contact_email, partners (Name|sector;...), mentor_capacity, seeks_tandem, wishes "
            "(optional: id, interests, strengths, exception_reason; others are ignored); see "
            "the README.",
            show_default=False,
        ),
    ],
    url: Annotated[
        str, typer.Option("--url", envvar="TANDEM_URL", help="Base URL of the registry's API.")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="TANDEM_TOKEN", help="A platform (or staff) token."),
    ] = None,
    newcomer_year: Annotated[
        int | None,
        typer.Option(
            "--newcomer-year",
            help="Where the file has no seeks_tandem: members that joined in this year or "
            "later seek a tandem (default: none do).",
        ),
    ] = None,
    exception_reason: Annotated[
        str | None,
        typer.Option(
            "--exception-reason",
            help="Why the admission rules do not apply: sent verbatim as exception_reason for "
            "lines refused for admission rules only (nothing else is filled in).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the file locally; send nothing.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=32, help="Requests in flight at once.")
    ] = 4,
) -> None:
    """Register existing members from a CSV through the registry's API, with a per-line
    summary naming every broken rule. Nothing missing is invented: the registry looks up a
    missing population or coordinates in GeoNames. Exit 1 if a line was rejected, 2 for
    unusable input or an unreachable registry."""
    from services.importer import main

    code = main(
        file, url=url, token=token, newcomer_year=newcomer_year,
        exception_reason=exception_reason, dry=dry_run, concurrency=concurrency, err=console,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller run (2,000 joins; about two minutes).")
    ] = False,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, max=20, help="Runs per figure (the median counts).")
    ] = 3,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only this part (repeatable): assignment, baselines, incremental, "
            "pipeline, registry, memory.",
        ),
    ] = None,
) -> None:
    """Measure the system side by side with its limits: assignment, event pipeline, registry,
    matcher memory; one table (or JSON), each figure next to its reference from the same run
    and the target it meets or misses."""
    import json

    from rich.console import Console as RichConsole

    from services.bench import FULL, PARTS, QUICK, run_bench
    from services.bench.report import table

    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(
            f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}",
            param_hint="--only",
        )
    _configure_logging("WARNING")
    command = " ".join(
        ["tandem bench", *(["--json"] if as_json else []), *(["--quick"] if quick else []),
         *([f"--repeat {repeat}"] if repeat != 3 else []),
         *(f"--only {part}" for part in only or ())]
    )  # fmt: skip
    results = asyncio.run(
        run_bench(
            QUICK if quick else FULL,
            repeat,
            lambda step: console.print(f"[dim]{step}[/]"),
            command,
            only,
        )
    )
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        RichConsole(width=160).print(table(results))
        console.print(f"command: {results['command']}")


if __name__ == "__main__":  # pragma: no cover
    app()
