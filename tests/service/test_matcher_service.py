"""The matcher's service layer without a broker: ingest of ``city.*`` records with dedup and
dead letters, the coalescing of solves, and staff decisions (through the HTTP API's router
where the answer is the point), each observed as stored rows and the records the outbox hands
to its sink."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy import update as update_

from schemas.events import Topics
from services.matcher import replan, store, tables
from services.matcher.domain.lifecycle import IllegalTransition, ProposalStatus
from services.matcher.domain.model import Tandem
from tests.helpers import eventually
from tests.service.conftest import TODAY, MatcherApp, bootstrap_matcher, public_member

NETWORK: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ammerbuch", "2015-01-01", {}),
    ("rheinfelden-baden", "2016-01-01", {"population": 34_000, "lat": 47.56, "lon": 7.78}),
    ("lemgo", "2020-01-01", {"state": "DE-NW", "population": 42_000, "lat": 52.03, "lon": 8.9}),
    ("goeppingen", "2024-03-01", {"seeks_tandem": True}),
)


async def joined_network(matcher: MatcherApp) -> dict[str, Any]:
    """Ingest the network, solve once; the newcomer's pending proposal."""
    await matcher.service.ingest([matcher.joined(m, j, **c) for m, j, c in NETWORK])
    await matcher.service.solve_now()
    items, _ = await store.list_proposals(matcher.service.engine, ProposalStatus.PENDING, 10, 0)
    [proposal] = items
    return proposal


async def members(matcher: MatcherApp) -> dict[str, str]:
    """Member id -> status in the read model."""
    async with matcher.service.engine.connect() as connection:
        rows = await connection.execute(select(tables.members.c.id, tables.members.c.status))
        return {str(i): str(s) for i, s in rows.all()}


# --- ingest and dedup ----------------------------------------------------------------------


async def test_joined_members_are_planned_and_the_proposal_announced(matcher: MatcherApp) -> None:
    proposal = await joined_network(matcher)
    assert await members(matcher) == dict.fromkeys([m for m, _, _ in NETWORK], "active")
    assert proposal["newcomer_id"] == "goeppingen" and proposal["reasons"]
    [proposed] = (await matcher.published()).on(Topics.TANDEM_PROPOSED)
    assert proposed["key"] == "goeppingen"  # key = city id
    assert proposed["value"]["data"]["proposal_id"] == proposal["proposal_id"]


async def test_a_redelivered_record_is_applied_once_and_a_reused_id_is_dead_lettered(
    matcher: MatcherApp,
) -> None:
    event_id = str(uuid.uuid4())
    first = matcher.record(Topics.CITY_JOINED, public_member("ammerbuch", "2015-01-01"),
                           event_id=event_id)  # fmt: skip
    await matcher.service.ingest([first, first])  # twice in one batch
    await matcher.service.ingest([first])  # and delivered again
    other = matcher.record(
        Topics.CITY_JOINED, public_member("lemgo", "2020-01-01", state="DE-NW"), event_id=event_id
    )
    after = matcher.joined("goeppingen", "2024-03-01", seeks_tandem=True)
    await matcher.service.ingest([other, after])  # the consumer goes on after the dead letter
    assert await members(matcher) == {"ammerbuch": "active", "goeppingen": "active"}
    [letter] = (await matcher.published()).on(Topics.dlq(Topics.CITY_JOINED))
    assert letter["value"]["error"] == f"envelope id {event_id} was used before for other data"


async def test_an_undecodable_record_is_dead_lettered_and_the_batch_applied(
    matcher: MatcherApp,
) -> None:
    wrong_key = matcher.record(Topics.CITY_JOINED, public_member("lemgo", "2020-01-01"), key="x")
    await matcher.service.ingest([wrong_key, matcher.joined("ammerbuch", "2015-01-01")])
    assert await members(matcher) == {"ammerbuch": "active"}
    assert len((await matcher.published()).on(Topics.dlq(Topics.CITY_JOINED))) == 1


async def test_an_older_revision_does_not_overwrite_a_newer_one(matcher: MatcherApp) -> None:
    newer = public_member("ammerbuch", "2015-01-01", population=60_000, revision=3)
    older = public_member("ammerbuch", "2015-01-01", population=40_000, revision=2)
    await matcher.service.ingest([matcher.record(Topics.CITY_UPDATED, newer)])
    await matcher.service.ingest([matcher.record(Topics.CITY_UPDATED, older)])
    async with matcher.service.engine.connect() as connection:
        [member] = (await store.domain_members(connection, ["ammerbuch"])).values()
    assert member.population == 60_000


async def test_a_departure_withdraws_the_pending_proposals(matcher: MatcherApp) -> None:
    proposal = await joined_network(matcher)
    left = matcher.record(Topics.CITY_LEFT, {"id": "goeppingen", "reason": "Umzug"})
    await matcher.service.ingest([left])
    assert (await members(matcher))["goeppingen"] == "left"
    async with matcher.service.engine.connect() as connection:
        row = await store.get_proposal(connection, str(proposal["proposal_id"]))
    assert row is not None and row["status"] == ProposalStatus.WITHDRAWN


# --- coalescing solves -----------------------------------------------------------------------


async def test_a_burst_of_changes_becomes_one_solve(tmp_path: Path) -> None:
    app = await bootstrap_matcher(tmp_path, solve_debounce_ms=400, solve_max_delay_ms=10_000)
    await app.service.start()
    try:
        await eventually(
            lambda: _true(app.service.solves == 1 and not app.service.solve_pending()),
            "the solve after the start",
        )  # fmt: skip
        for _ in range(10):  # quicker than the debounce
            app.service.request_solve()
            await asyncio.sleep(0.01)
        await eventually(lambda: _true(app.service.solves >= 2), "the burst's solve")
        # No solve follows once the burst's is done: wait past another debounce to see it.
        await eventually(lambda: _true(not app.service.solve_pending()), "a settled solver")
        await asyncio.sleep(0.8)
        assert app.service.solves == 2
    finally:
        await app.service.stop()


async def test_changes_that_never_pause_are_solved_within_the_longest_delay(
    tmp_path: Path,
) -> None:
    app = await bootstrap_matcher(tmp_path, solve_debounce_ms=1_000, solve_max_delay_ms=200)
    await app.service.start()
    try:
        await eventually(lambda: _true(app.service.solves >= 1), "the solve after the start")
        before = app.service.solves

        async def requested_and_solved() -> bool:
            app.service.request_solve()  # every 50 ms: never a quiet second
            return app.service.solves > before

        await eventually(requested_and_solved, "a solve despite the endless burst", timeout=10)
    finally:
        await app.service.stop()


async def _true(value: bool) -> bool:
    return value


# --- decisions -------------------------------------------------------------------------------


async def test_accepting_starts_a_tandem_of_the_configured_months(matcher: MatcherApp) -> None:
    proposal = await joined_network(matcher)
    proposal_id = str(proposal["proposal_id"])
    accepted = await matcher.service.decide(proposal_id, ProposalStatus.ACCEPTED, "staff: E", "")
    assert accepted["status"] == "accepted" and accepted["ends_on"] == "2027-11-21"
    assert matcher.service.solve_pending()  # a decision asks for a re-solve
    with pytest.raises(IllegalTransition):
        await matcher.service.decide(proposal_id, ProposalStatus.REJECTED, "staff: E", "zu spät")
    [decided] = (await matcher.published()).on(Topics.TANDEM_DECIDED)
    assert decided["key"] == "goeppingen"
    assert decided["value"]["data"]["decision"] == "accepted"


async def test_the_api_refuses_a_blank_rejection_reason_with_a_field_error(
    matcher: MatcherApp,
) -> None:
    proposal = await joined_network(matcher)
    url = f"/api/proposals/{proposal['proposal_id']}/reject"
    async with matcher.api() as api:
        for blank in ("", "  ", "\n\t"):
            refused = await api.post(url, json={"reason": blank})
            assert refused.status_code == 422, blank
            assert refused.json()["detail"][0]["loc"] == ["body", "reason"]
        still = await api.get(f"/api/proposals/{proposal['proposal_id']}")
        assert still.json()["status"] == "pending"
        rejected = await api.post(url, json={"reason": " kennen sich nicht "})
        assert rejected.status_code == 200
        assert rejected.json()["decision_reason"] == "kennen sich nicht"
        again = await api.post(url, json={"reason": "nochmal"})
        assert again.status_code == 409 and "only pending proposals" in again.json()["detail"]
        unknown = await api.post("/api/proposals/nope/reject", json={"reason": "x"})
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "no proposal 'nope'"})


async def test_choosing_an_alternative_needs_an_alternative_with_free_capacity(
    matcher: MatcherApp,
) -> None:
    proposal = await joined_network(matcher)
    proposal_id = proposal["proposal_id"]
    alternative = proposal["alternatives"][0]["mentor_id"]
    # The alternative is busy with a running tandem: the pair cannot be formed now.
    await _accepted_tandem(matcher, "lemgo-neu", alternative, TODAY + dt.timedelta(days=1))
    async with matcher.api() as api:
        url = f"/api/proposals/{proposal_id}/choose"
        not_listed = await api.post(url, json={"mentor_id": "goeppingen"})
        assert not_listed.status_code == 422
        assert not_listed.json()["detail"][0]["loc"] == ["body", "mentor_id"]
        busy = await api.post(url, json={"mentor_id": alternative})
        assert busy.status_code == 409
        assert busy.json() == {"detail": f"{alternative} has no free mentor capacity"}
        await _end_tandems(matcher, TODAY)  # the tandem ended today: capacity is free again
        chosen = await api.post(url, json={"mentor_id": alternative, "reason": "kennen sich"})
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["status"] == "accepted"
        assert chosen.json()["supersedes"] == proposal_id
    decided = (await matcher.published()).on(Topics.TANDEM_DECIDED)
    assert [d["value"]["data"]["decision"] for d in decided] == ["rejected", "accepted"]


async def _accepted_tandem(matcher: MatcherApp, newcomer: str, mentor: str, ends: dt.date) -> None:
    async with matcher.service.engine.begin() as connection:
        await connection.execute(
            insert(tables.proposals).values(
                proposal_id=str(uuid.uuid4()), newcomer_id=newcomer, mentor_id=mentor, score=0.5,
                breakdown={}, reasons=[], alternatives=[], status=ProposalStatus.ACCEPTED.value,
                created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                decided_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), ends_on=ends,
            )
        )  # fmt: skip


async def _end_tandems(matcher: MatcherApp, ends: dt.date) -> None:
    async with matcher.service.engine.begin() as connection:
        await connection.execute(tables.proposals.update().values(ends_on=ends).where(
            tables.proposals.c.status == ProposalStatus.ACCEPTED.value))  # fmt: skip


async def test_the_sql_running_rule_agrees_with_the_domain_s(matcher: MatcherApp) -> None:
    """``store.running_tandem`` is ``Tandem.is_running`` in SQL: both pick the same tandems."""
    ends = {f"n{d + 5}": TODAY + dt.timedelta(days=d) for d in range(-5, 6)}
    for newcomer, end in ends.items():
        await _accepted_tandem(matcher, newcomer, "ammerbuch", end)
    p = tables.proposals
    async with matcher.service.engine.connect() as connection:
        rows = await connection.execute(
            select(p.c.newcomer_id).where(store.running_tandem(p, TODAY))
        )
        in_sql = {str(row.newcomer_id) for row in rows.all()}
    started = dt.date(2026, 1, 1)
    in_domain = {
        newcomer for newcomer, end in ends.items()
        if Tandem(newcomer, "ammerbuch", started, end).is_running(TODAY)
    }  # fmt: skip
    assert in_sql == in_domain and len(in_domain) == 5


async def test_a_burst_still_to_be_ingested_becomes_one_solve(tmp_path: Path) -> None:
    # While the consumer is behind (records wait), the solver waits for them past its usual
    # longest delay: the changes ingested meanwhile join one solve, which follows as soon as
    # the backlog is gone.
    app = await bootstrap_matcher(
        tmp_path, solve_debounce_ms=10, solve_max_delay_ms=50, solve_backlog_max_delay_ms=30_000
    )
    backlog = [0]
    app.service.backlog = lambda: backlog[0]
    await app.service.start()
    try:
        await eventually(lambda: _true(app.service.solves == 1), "the solve after the start")
        backlog[0] = 1_000
        await app.service.ingest([app.joined(m, j, **c) for m, j, c in NETWORK[:2]])
        await asyncio.sleep(0.3)  # six times the longest delay without a backlog
        assert app.service.solves == 1 and app.service.solve_pending()
        await app.service.ingest([app.joined(m, j, **c) for m, j, c in NETWORK[2:]])
        backlog[0] = 0
        await eventually(lambda: _true(app.service.solves == 2), "the burst's solve")
        assert app.service.last_solve is not None and app.service.last_solve.proposed == 1
    finally:
        await app.service.stop()


async def test_a_burst_waits_for_the_broker_to_confirm_its_end(tmp_path: Path) -> None:
    # Nothing is known to wait (a fast producer leaves the lag at zero between fetches), but
    # the round is a burst and the broker has not yet answered that nothing more arrived: the
    # solve waits for that answer, and follows it at once.
    app = await bootstrap_matcher(
        tmp_path, solve_debounce_ms=10, solve_max_delay_ms=50,
        solve_backlog_max_delay_ms=30_000, solve_burst_records=2,
    )  # fmt: skip
    unconfirmed = [False]
    app.service.backlog = lambda: 0
    app.service.unconfirmed = lambda: unconfirmed[0]
    await app.service.start()
    try:
        await eventually(lambda: _true(app.service.solves == 1), "the solve after the start")
        unconfirmed[0] = True
        await app.service.ingest([app.joined(m, j, **c) for m, j, c in NETWORK[:2]])
        await asyncio.sleep(0.3)  # six times the longest delay of a round that is no burst
        assert app.service.solves == 1 and app.service.solve_pending()
        await app.service.ingest([app.joined(m, j, **c) for m, j, c in NETWORK[2:]])
        unconfirmed[0] = False
        await eventually(lambda: _true(app.service.solves == 2), "the burst's solve")
        assert app.service.last_solve is not None and app.service.last_solve.proposed == 1
        # One join alone is no burst: solved after its quiet moment, confirmed or not.
        unconfirmed[0] = True
        member, joined, _ = NETWORK[0]
        update = public_member(member, joined, revision=2, population=31_000)
        await app.service.ingest([app.record(Topics.CITY_UPDATED, update)])
        await eventually(lambda: _true(app.service.solves == 3), "the single change's solve")
    finally:
        await app.service.stop()


# --- the solver's member cache ---------------------------------------------------------------


async def _cache_agrees(matcher: MatcherApp) -> bool:
    """Whether the solver's member cache holds what the database holds now (all members, the
    departed as inactive), stamped with the database's change number."""
    cache = replan._CACHES[matcher.service.engine]
    async with matcher.service.engine.connect() as connection:
        rows = (await connection.execute(select(tables.members))).mappings().all()
        counter = await connection.scalar(select(tables.member_changes.c.seq))
    return cache.seq == counter and cache.members == {
        str(row["id"]): store.domain_member(row) for row in rows
    }


async def test_the_solver_takes_ingested_members_without_reading_them_back(
    matcher: MatcherApp,
) -> None:
    await joined_network(matcher)  # the first solve fills the cache from the database
    assert await _cache_agrees(matcher)
    # Joins and updates the ingest committed: the cache holds them before any solve.
    update = public_member("ammerbuch", "2015-01-01", population=61_000, revision=2)
    await matcher.service.ingest(
        [matcher.record(Topics.CITY_UPDATED, update), matcher.joined("bremen", "2024-05-01")]
    )
    assert await _cache_agrees(matcher)
    # A departure is not handed over: the joins behind it leave a gap the next solve reads.
    left = matcher.record(Topics.CITY_LEFT, {"id": "lemgo", "reason": "Umzug"})
    await matcher.service.ingest([left, matcher.joined("kiel", "2024-06-01")])
    assert not await _cache_agrees(matcher)
    await matcher.service.solve_now()
    assert await _cache_agrees(matcher)
    # Another process's write (a change number this process did not take) is read, not missed.
    async with matcher.service.engine.begin() as connection:
        change = await store.next_member_change(connection)
        await connection.execute(
            update_(tables.members)
            .where(tables.members.c.id == "kiel")
            .values(population=12_345, change_seq=change)
        )
    await matcher.service.ingest([matcher.joined("luebeck", "2024-07-01")])
    assert not await _cache_agrees(matcher)
    await matcher.service.solve_now()
    assert await _cache_agrees(matcher)
    assert replan._CACHES[matcher.service.engine].members["kiel"].population == 12_345
