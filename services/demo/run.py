"""``tandem demo``: the real network on an embedded broker, the newest cohort joins.

Everything goes through the public surfaces: members are registered over HTTP, proposals are
read over HTTP; the matcher only learns of members through ``city.joined`` on the broker.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from services.demo.network import DemoMember, load_network, split_cohort
from services.infra.settings import CommonSettings
from services.runtime import Node

out = Console()
err = Console(stderr=True)

ESTIMATED_DE = {
    "joined": "Beitrittsjahr",
    "population": "Einwohnerzahl",
    "interests": "Interessen",
    "strengths": "Stärken",
    "mentor_capacity": "Kapazität",
    "partners": "Partner",
    "contact": "Kontakt",
}


class DemoFailed(RuntimeError):
    """Something the demo needs did not happen; the message says what."""


async def register(client: httpx.AsyncClient, members: Sequence[DemoMember]) -> None:
    """Register ``members`` through the API, a few at a time."""
    gate = asyncio.Semaphore(8)

    async def one(member: DemoMember) -> None:
        async with gate:
            body = member.registration.model_dump(mode="json", exclude_none=True)
            response = await client.post("/api/members", json=body)
            if response.status_code != 201:
                raise DemoFailed(
                    f"registering {member.id} failed: {response.status_code} {response.text}"
                )

    await asyncio.gather(*(one(m) for m in members))


async def wait_for(client: httpx.AsyncClient, what: str, check: Any, timeout: float) -> Any:
    """Poll ``check(client)`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check(client)
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def run_demo(cohort: int = 2024, timeout: float = 60) -> int:
    """Run the demo; returns the exit code."""
    started = time.monotonic()
    members = load_network(newcomer_year=cohort)
    existing, newcomers = split_cohort(members, cohort)
    if not newcomers:
        err.print(f"[red]no members joined in {cohort}[/]")
        return 2
    by_id = {m.id: m for m in members}
    platform, staff = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as data:
        settings = CommonSettings(
            data=Path(data),
            port=0,
            api_tokens=SecretStr(f"platform:{platform},staff:{staff}"),
        )
        node = Node(settings)
        try:
            err.print("starting embedded broker, registry and matcher ...")
            await node.start()
            err.print(f"running at {node.url} (broker {node.settings.broker})")
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
                client.headers["Authorization"] = f"Bearer {platform}"
                err.print(f"registering {len(existing)} existing members ...")
                await register(client, existing)
                client.headers["Authorization"] = f"Bearer {staff}"

                async def matcher_knows_all(c: httpx.AsyncClient) -> bool:
                    status = (await c.get("/api/matcher/status")).json()
                    return bool(status["members"] >= len(existing))

                await wait_for(
                    client, "the matcher to learn the network", matcher_knows_all, timeout
                )
                err.print(f"the {cohort} cohort joins: {len(newcomers)} newcomers ...")
                client.headers["Authorization"] = f"Bearer {platform}"
                await register(client, newcomers)
                client.headers["Authorization"] = f"Bearer {staff}"
                wanted = {m.id for m in newcomers}

                async def all_answered(c: httpx.AsyncClient) -> dict[str, Any] | None:
                    pending = (
                        await c.get("/api/proposals", params={"status": "pending", "limit": 1000})
                    ).json()
                    waiting = (await c.get("/api/newcomers/waiting")).json()
                    proposals = {
                        p["newcomer_id"]: p for p in pending["items"] if p["newcomer_id"] in wanted
                    }
                    unmatched = {
                        w["newcomer_id"]: w for w in waiting["items"] if w["newcomer_id"] in wanted
                    }
                    if set(proposals) | set(unmatched) >= wanted:
                        return {"proposals": proposals, "unmatched": unmatched}
                    return None

                result = await wait_for(
                    client, "proposals for every newcomer", all_answered, timeout
                )
                advice = await ask_advice(client, newcomers[0])
        except DemoFailed as error:
            err.print(f"[red]demo failed:[/] {error}")
            return 1
        except Exception as error:
            err.print(f"[red]demo failed:[/] {type(error).__name__}: {error}")
            return 1
        finally:
            await node.stop()
    print_proposals(cohort, newcomers, by_id, result["proposals"], result["unmatched"])
    print_advice(advice, by_id)
    err.print(f"done in {time.monotonic() - started:.1f} s")
    return 0


ADVICE_QUESTION = "Wie gewinnen wir junge Menschen für ein Ehrenamt in unseren Vereinen?"


async def ask_advice(client: httpx.AsyncClient, asker: DemoMember) -> dict[str, Any]:
    """Collegial advice for ``asker`` on the real network (as staff on its behalf)."""
    topics = list(asker.registration.interests[:2]) or ["volunteer_recruitment"]
    response = await client.post(
        "/api/advice-requests",
        json={"city_id": asker.id, "topics": topics, "question": ADVICE_QUESTION, "k": 3},
    )
    if response.status_code != 201:
        raise DemoFailed(f"advice request failed: {response.status_code} {response.text}")
    answer: dict[str, Any] = response.json()
    return answer


def print_advice(advice: dict[str, Any], by_id: dict[str, DemoMember]) -> None:
    """One collegial-advice answer: whom to ask, and why."""
    from schemas.topics import topic_label

    topics = ", ".join(topic_label(t) for t in advice["topics"])
    table = Table(
        title=f"Kollegiale Beratung für {_name(by_id, advice['city_id'])}: {topics}\n"
        f"„{advice['question']}“",
        show_lines=True,
    )
    table.add_column("Ansprechen", style="bold green")
    table.add_column("Score", justify="right")
    table.add_column("Gründe")
    for match in advice["matches"]:
        table.add_row(
            _name(by_id, match["city_id"]), f"{match['score']:.2f}", "\n".join(match["reasons"])
        )
    out.print(table)


def _name(by_id: dict[str, DemoMember], member_id: str) -> str:
    member = by_id.get(member_id)
    return member.registration.name if member else member_id


def _estimated(member: DemoMember | None) -> str:
    if member is None or not member.estimated:
        return ""
    return ", ".join(ESTIMATED_DE.get(f, f) for f in member.estimated)


def print_proposals(
    cohort: int,
    newcomers: Sequence[DemoMember],
    by_id: dict[str, DemoMember],
    proposals: dict[str, dict[str, Any]],
    unmatched: dict[str, dict[str, Any]],
) -> None:
    """The readable table: newcomer, proposed mentor, score, reasons, next alternative."""
    table = Table(title=f"Tandem-Vorschläge für den Jahrgang {cohort}", show_lines=True)
    table.add_column("Neue Stadt", style="bold")
    table.add_column("Vorgeschlagene Tandem-Stadt", style="green")
    table.add_column("Score", justify="right")
    table.add_column("Gründe")
    table.add_column("Nächste Alternative")
    table.add_column("geschätzt (*)", style="dim")
    for member in sorted(newcomers, key=lambda m: m.registration.name):
        proposal = proposals.get(member.id)
        if proposal is None:
            reason = unmatched.get(member.id, {}).get("message", "kein Vorschlag")
            table.add_row(
                member.registration.name, f"[red]{reason}[/]", "", "", "", _estimated(member)
            )
            continue
        alternatives = proposal["alternatives"]
        alternative = (
            f"{_name(by_id, alternatives[0]['mentor_id'])} ({alternatives[0]['score']:.2f})"
            if alternatives
            else "–"
        )
        mentor = by_id.get(proposal["mentor_id"])
        estimated = "; ".join(
            part
            for part in (
                f"neu: {_estimated(member)}" if member.estimated else "",
                f"Tandem: {_estimated(mentor)}" if mentor and mentor.estimated else "",
            )
            if part
        )
        table.add_row(
            member.registration.name,
            _name(by_id, proposal["mentor_id"]),
            f"{proposal['score']:.2f}",
            "\n".join(proposal["reasons"]),
            alternative,
            estimated,
        )
    out.print(table)
    out.print(
        "(*) Werte, die die Quellen nicht nennen (Interessen, Stärken, Kapazität, Partner, "
        "Kontakt, fehlende Beitrittsjahre und Einwohnerzahlen), hat die Demo deterministisch "
        "geschätzt. Einwohnerzahlen und Koordinaten: GeoNames (CC BY 4.0)."
    )
