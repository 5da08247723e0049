"""What the staff page shows, assembled from the matcher's read model (no HTTP, no HTML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from schemas.geo import great_circle_km
from schemas.member import STATES
from schemas.topics import topic_label
from services.matcher import store, tables
from services.matcher.domain.explain import REGION_LABELS_DE
from services.matcher.domain.lifecycle import ProposalStatus
from services.matcher.service import MatcherService
from services.staff.geo import Point, project


@dataclass(frozen=True)
class MemberCard:
    """A member as the page shows it (no contact data)."""

    id: str
    name: str
    population: int
    state: str
    region: str
    joined: str
    interests: list[str]
    strengths: list[str]
    status: str
    point: Point | None
    lat: float | None
    lon: float | None
    #: Fields whose value is an estimate (marked on the page).
    estimated: frozenset[str] = frozenset()

    @classmethod
    def of(cls, row: Any) -> MemberCard:
        lat, lon = row["lat"], row["lon"]
        return cls(
            id=row["id"], name=row["name"], population=row["population"],
            state=STATES[row["state"]][0],
            region=REGION_LABELS_DE.get(row["region"], row["region"]),
            joined=str(row["joined"].year), interests=[topic_label(t) for t in row["interests"]],
            strengths=[topic_label(t) for t in row["strengths"]], status=row["status"],
            point=project(lon, lat) if lat is not None and lon is not None else None,
            lat=lat, lon=lon, estimated=frozenset(row["estimated"] or ()),
        )  # fmt: skip


@dataclass
class Overview:
    """Everything on the page."""

    members: dict[str, MemberCard]
    pending: list[dict[str, Any]]
    accepted: list[dict[str, Any]]
    waiting: list[dict[str, Any]]
    newcomers: set[str] = field(default_factory=set)
    #: Per pending proposal that replaced another: which mentor it replaced and why (German).
    replaced: dict[str, str] = field(default_factory=dict)

    def name(self, member_id: str) -> str:
        card = self.members.get(member_id)
        return card.name if card else member_id

    def distance(self, a: str, b: str) -> str:
        one, two = self.members.get(a), self.members.get(b)
        if one is None or two is None or one.lat is None or two.lat is None:
            return "Entfernung unbekannt"
        assert one.lon is not None and two.lon is not None
        return f"{great_circle_km(one.lat, one.lon, two.lat, two.lon):.0f} km"


async def overview(matcher: MatcherService) -> Overview:
    """Pending proposals (newest first), running tandems, waiting newcomers, all members."""
    async with matcher.engine.connect() as connection:
        rows = (await connection.execute(select(tables.members))).mappings().all()
    members = {row["id"]: MemberCard.of(row) for row in rows}
    pending, _ = await store.list_proposals(matcher.engine, ProposalStatus.PENDING, 1000, 0)
    accepted, _ = await store.list_proposals(matcher.engine, ProposalStatus.ACCEPTED, 1000, 0)
    waiting = await store.waiting_newcomers(matcher.engine)
    newcomers = {p["newcomer_id"] for p in pending} | {w["newcomer_id"] for w in waiting}
    result = Overview(members, pending, accepted, waiting, newcomers)
    result.replaced = await _replaced(matcher, result)
    return result


async def _replaced(matcher: MatcherService, o: Overview) -> dict[str, str]:
    """For each pending proposal that replaced an earlier one: what changed and why, in German
    (so staff see which proposals a decision changed)."""
    notes: dict[str, str] = {}
    async with matcher.engine.connect() as connection:
        for p in o.pending:
            if not p.get("supersedes"):
                continue
            old = await store.get_proposal(connection, p["supersedes"])
            if old is None:
                continue
            before = old["mentor_id"]
            taken = next((t for t in o.accepted if t["mentor_id"] == before), None)
            planned = next((x for x in o.pending if x["mentor_id"] == before and x is not p), None)
            if old["status"] == ProposalStatus.REJECTED:
                why = "abgelehnt"
            elif taken is not None:
                why = f"{o.name(before)} ist jetzt Tandem-Stadt von {o.name(taken['newcomer_id'])}"
            elif planned is not None:
                why = f"{o.name(before)} ist jetzt für {o.name(planned['newcomer_id'])} vorgesehen"
            else:
                why = "der gemeinsame Plan hat sich geändert"
            notes[p["proposal_id"]] = f"Ersetzt den Vorschlag {o.name(before)}: {why}."
    return notes


async def version(matcher: MatcherService) -> str:
    """Changes whenever what the page shows changes (for the page's polling)."""
    counts = await store.status_counts(matcher.engine)
    latest, _ = await store.list_proposals(matcher.engine, None, 1, 0)
    newest = latest[0]["proposal_id"] if latest else "-"
    return f"{newest}:" + ",".join(f"{k}={counts[k]}" for k in sorted(counts))
