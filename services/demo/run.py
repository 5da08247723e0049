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
from rich.padding import Padding
from rich.table import Table

from schemas.geo import great_circle_km
from services.demo.network import DemoMember, load_network
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


STATUS_DE = {
    "pending": "offen",
    "accepted": "angenommen",
    "rejected": "abgelehnt",
    "superseded": "ersetzt",
    "withdrawn": "zurückgezogen",
}


class DemoFailed(RuntimeError):
    """Something the demo needs did not happen; the message says what."""


class Staff:
    """The demo's HTTP side: what the platform and programme staff would do."""

    def __init__(self, client: httpx.AsyncClient, platform: str, staff: str, timeout: float):
        self.client = client
        self.platform = {"Authorization": f"Bearer {platform}"}
        self.staff = {"Authorization": f"Bearer {staff}"}
        self.timeout = timeout
        self.known = 0

    async def register(self, members: Sequence[DemoMember], *, seeking: bool) -> None:
        """Register ``members`` through the API (a few at a time), then wait until the matcher
        has read them all from the broker."""
        gate = asyncio.Semaphore(8)

        async def one(member: DemoMember) -> None:
            async with gate:
                body = member.registration.model_dump(mode="json", exclude_none=True)
                body["seeks_tandem"] = seeking
                response = await self.client.post("/api/members", json=body, headers=self.platform)
                if response.status_code != 201:
                    raise DemoFailed(
                        f"Registrierung von {member.id} fehlgeschlagen: "
                        f"{response.status_code} {response.text}"
                    )

        await asyncio.gather(*(one(m) for m in members))
        self.known += len(members)

        async def matcher_knows_all() -> bool:
            status = await self.get("/api/matcher/status")
            return bool(status["members"] >= self.known)

        await self.wait_for("die neuen Mitglieder im Matcher", matcher_knows_all)

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.staff)
        if response.status_code != 200:
            raise DemoFailed(f"GET {path} fehlgeschlagen: {response.status_code} {response.text}")
        return response.json()

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        response = await self.client.post(path, json=body, headers=self.staff)
        if response.status_code not in (200, 201):
            raise DemoFailed(f"POST {path} fehlgeschlagen: {response.status_code} {response.text}")
        return response.json()

    async def accept_current(self, newcomer_id: str, started_on: str) -> int:
        """Accept the newcomer's pending proposal; 1 if done, 0 if it has none (any more).

        The matcher may still be re-planning after the previous acceptance: a proposal read a
        moment ago can be superseded by now (409), so the current one is read again."""
        for _ in range(20):
            found = await self.get(
                "/api/proposals", status="pending", newcomer_id=newcomer_id, limit=1
            )
            if not found["items"]:
                return 0
            path = f"/api/proposals/{found['items'][0]['proposal_id']}/accept"
            body = {"reason": "Demo: angenommen", "started_on": started_on}
            response = await self.client.post(path, json=body, headers=self.staff)
            if response.status_code == 200:
                return 1
            if response.status_code != 409:
                raise DemoFailed(
                    f"POST {path} fehlgeschlagen: {response.status_code} {response.text}"
                )
            await asyncio.sleep(0.1)
        raise DemoFailed(f"kein annehmbarer Vorschlag für {newcomer_id}")

    async def wait_for(self, what: str, check: Any) -> Any:
        """Poll ``check()`` until it returns something truthy, or fail after the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise DemoFailed(f"nach {self.timeout:.0f} s keine Antwort: {what}")
            await asyncio.sleep(0.1)

    async def answers_for(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """Wait until every newcomer in ``wanted`` has a pending proposal or a reason why not."""

        async def all_answered() -> dict[str, dict[str, Any]] | None:
            pending = await self.get("/api/proposals", status="pending", limit=1000)
            waiting = await self.get("/api/newcomers/waiting", limit=1000)
            proposals = {
                p["newcomer_id"]: p for p in pending["items"] if p["newcomer_id"] in wanted
            }
            unmatched = {
                w["newcomer_id"]: w for w in waiting["items"] if w["newcomer_id"] in wanted
            }
            if set(proposals) | set(unmatched) >= wanted:
                return {"proposals": proposals, "unmatched": unmatched}
            return None

        found: dict[str, dict[str, Any]] = await self.wait_for("Vorschläge", all_answered)
        return found


async def replay(
    staff: Staff, members: Sequence[DemoMember], cohort: int, interactive: bool
) -> tuple[list[DemoMember], dict[str, dict[str, Any]]]:
    """The network's history: founders first, then every cohort in order of its join year
    joins through the API and gets its proposals, which staff accept (tandems starting in
    March of that year, so they have ended by the next cohort) — until ``cohort``, whose
    proposals are returned undecided (or decided by hand with ``interactive``)."""
    years = sorted({m.join_year for m in members if m.join_year is not None})
    founding = years[0]
    founders = [m for m in members if m.join_year is None or m.join_year == founding]
    err.print(f"{len(founders)} Gründungsmitglieder (von {founding} oder ohne bekanntes Jahr) …")
    await staff.register(founders, seeking=False)
    for year in (y for y in years if founding < y <= cohort):
        joining = [m for m in members if m.join_year == year]
        await staff.register(joining, seeking=True)
        answers = await staff.answers_for({m.id for m in joining})
        if year == cohort:
            if interactive:
                await decide_by_hand(staff, joining, answers["proposals"])
            return joining, answers
        accepted = 0
        for newcomer_id in sorted(answers["proposals"]):
            accepted += await staff.accept_current(newcomer_id, f"{year}-03-01")
        err.print(
            f"{year}: {len(joining)} neue Mitglieder, {accepted} Tandems angenommen, "
            f"{len(joining) - accepted} ohne Tandem"
        )
    raise DemoFailed(f"im Jahr {cohort} ist niemand beigetreten")


async def decide_by_hand(
    staff: Staff, joining: Sequence[DemoMember], proposals: dict[str, dict[str, Any]]
) -> None:
    """Ask in the terminal what to do with each proposal of the cohort."""
    from rich.prompt import Prompt

    for member in joining:
        proposal = proposals.get(member.id)
        if proposal is None:
            continue
        out.print(
            f"\n[bold]{member.registration.name}[/] -> [green]{proposal['mentor_id']}[/] "
            f"({proposal['score']:.2f}): " + "; ".join(proposal["reasons"])
        )
        for index, alternative in enumerate(proposal["alternatives"], start=1):
            why = alternative.get("why_not") or ""
            out.print(
                f"  {index}: {alternative['mentor_id']} ({alternative['score']:.2f})"
                + (f" – {why}" if why else "")
            )
        choices = ["a", "r", "s", *(str(i) for i in range(1, len(proposal["alternatives"]) + 1))]
        choice = await asyncio.to_thread(
            Prompt.ask, "[a]nnehmen, [r] ablehnen, [s] überspringen, Nummer = Alternative",
            choices=choices, default="s", console=out,
        )  # fmt: skip
        path = f"/api/proposals/{proposal['proposal_id']}"
        if choice == "a":
            proposal.update(await staff.post(f"{path}/accept", {"reason": "Demo (Terminal)"}))
        elif choice == "r":
            reason = await asyncio.to_thread(
                Prompt.ask, "Grund", default="passt nicht", console=out
            )
            proposal.update(await staff.post(f"{path}/reject", {"reason": reason}))
        elif choice.isdigit():
            mentor = proposal["alternatives"][int(choice) - 1]["mentor_id"]
            proposal.update(
                await staff.post(
                    f"{path}/choose", {"mentor_id": mentor, "reason": "Demo (Terminal)"}
                )
            )


async def run_demo(
    cohort: int | None = None, timeout: float = 60, interactive: bool = False
) -> int:
    """Run the demo; returns the exit code."""
    started = time.monotonic()
    members = load_network()
    years = sorted({m.join_year for m in members if m.join_year is not None})
    shown = cohort if cohort is not None else years[-1]
    if shown not in years[1:]:
        err.print(f"[red]kein Jahrgang {shown}; möglich: {', '.join(map(str, years[1:]))}[/]")
        return 2
    by_id = {m.id: m for m in members}
    platform, staff_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as data:
        settings = CommonSettings(
            data=Path(data), port=0,
            api_tokens=SecretStr(f"platform:{platform},staff:{staff_token}:Demo-Team"),
        )  # fmt: skip
        node = Node(settings)
        try:
            err.print("Starte eingebetteten Broker, Registry und Matcher …")
            await node.start()
            err.print(f"läuft unter {node.url} (Broker {node.settings.broker})")
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
                staff = Staff(client, platform, staff_token, timeout)
                joining, answers = await replay(staff, members, shown, interactive)
                advice = await ask_advice(staff, joining[0])
        except DemoFailed as error:
            err.print(f"[red]Demo fehlgeschlagen:[/] {error}")
            return 1
        except Exception as error:
            err.print(f"[red]Demo fehlgeschlagen:[/] {type(error).__name__}: {error}")
            return 1
        finally:
            await node.stop()
    print_proposals(shown, joining, by_id, answers["proposals"], answers["unmatched"])
    print_advice(advice, by_id)
    err.print(f"fertig in {time.monotonic() - started:.1f} s")
    return 0


ADVICE_QUESTION = "Wie gewinnen wir junge Menschen für ein Ehrenamt in unseren Vereinen?"


async def ask_advice(staff: Staff, asker: DemoMember) -> dict[str, Any]:
    """Collegial advice for ``asker`` on the real network (as staff on its behalf)."""
    topics = list(asker.registration.interests[:2]) or ["volunteer_recruitment"]
    answer: dict[str, Any] = await staff.post(
        "/api/advice-requests",
        {"city_id": asker.id, "topics": topics, "question": ADVICE_QUESTION, "k": 3},
    )
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
    """A narrow table (fits 80 columns: newcomer, mentor, score, distance, status), then per
    newcomer its reasons, the next alternative with why not, and what was estimated."""
    table = Table(title=f"Tandem-Vorschläge für den Jahrgang {cohort}")
    table.add_column("Neue Stadt", style="bold", overflow="fold")
    table.add_column("Tandem-Stadt", style="green", overflow="fold")
    table.add_column("Score", justify="right")
    table.add_column("km", justify="right")
    table.add_column("Status")
    ordered = sorted(newcomers, key=lambda m: m.registration.name)
    for member in ordered:
        proposal = proposals.get(member.id)
        if proposal is None:
            table.add_row(member.registration.name, "[red]kein Vorschlag[/]", "", "", "")
            continue
        table.add_row(
            member.registration.name + (" *" if member.estimated else ""),
            _name(by_id, proposal["mentor_id"]) + (" *" if _estimates(by_id, proposal) else ""),
            f"{proposal['score']:.2f}",
            _km(member, by_id.get(proposal["mentor_id"])),
            STATUS_DE.get(proposal["status"], proposal["status"]),
        )
    out.print(table)
    for member in ordered:
        proposal = proposals.get(member.id)
        out.print(f"\n[bold]{member.registration.name}[/]", end="")
        if proposal is None:
            reason = unmatched.get(member.id, {}).get("message", "kein Vorschlag")
            out.print(f": [red]{reason}[/]")
            continue
        out.print(f" → [green]{_name(by_id, proposal['mentor_id'])}[/]")
        for reason in proposal["reasons"]:
            out.print(Padding(f"• {reason}", (0, 0, 0, 2)))
        for alternative in proposal["alternatives"][:1]:
            why = alternative.get("why_not") or ""
            line = (
                f"Alternative: {_name(by_id, alternative['mentor_id'])} "
                f"({alternative['score']:.2f}, "
                f"{_km(member, by_id.get(alternative['mentor_id']))} km)"
            )
            out.print(Padding(line + (f" – {why}" if why else ""), (0, 0, 0, 2)))
        mentor = by_id.get(proposal["mentor_id"])
        estimated = "; ".join(
            part
            for part in (
                f"neu: {_estimated(member)}" if member.estimated else "",
                f"Tandem: {_estimated(mentor)}" if mentor and mentor.estimated else "",
            )
            if part
        )
        if estimated:
            out.print(Padding(f"[dim]geschätzt (*): {estimated}[/]", (0, 0, 0, 2)))
    out.print(
        "\n(*) Werte, die die Quellen nicht nennen (Interessen, Stärken, Kapazität, Partner, "
        "Kontakt, fehlende Beitrittsjahre und Einwohnerzahlen), hat die Demo deterministisch "
        "geschätzt. Einwohnerzahlen und Koordinaten: GeoNames (CC BY 4.0)."
    )


def _estimates(by_id: dict[str, DemoMember], proposal: dict[str, Any]) -> bool:
    mentor = by_id.get(proposal["mentor_id"])
    return bool(mentor and mentor.estimated)


def _km(a: DemoMember, b: DemoMember | None) -> str:
    one, two = a.registration, b.registration if b else None
    if two is None or one.lat is None or one.lon is None or two.lat is None or two.lon is None:
        return "?"
    return f"{great_circle_km(one.lat, one.lon, two.lat, two.lon):.0f}"
