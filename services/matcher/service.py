"""The matcher as a running service: ingest events, coalesce changes, re-solve, decide."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schemas.events import (
    CityJoined,
    CityLeft,
    CityUpdated,
    DeadLetter,
)
from schemas.member import PublicMember
from services.infra.consumer import Intake
from services.infra.db import make_engine, migrate
from services.infra.deadletter import (
    dead_letter,
    enqueue_dead_letter,
    refused_by_database,
    retry_transient,
)
from services.infra.kafka import kafka_sink
from services.infra.metrics import SOLVE_SECONDS
from services.infra.outbox import OutboxRelay, RecordSink
from services.infra.records import Delivery, Poison, payload_digest
from services.matcher import store, tables
from services.matcher.coalescing import Coalescing
from services.matcher.decisions import Decision, choose_alternative, decide
from services.matcher.domain.scoring import Weights
from services.matcher.replan import SolveResult, ensure_lock_row, remember_members, replan
from services.matcher.settings import MatcherSettings
from services.matcher.weights import in_force as weights_in_force

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


def utc_today() -> dt.date:
    """Today's date in UTC."""
    return dt.datetime.now(dt.UTC).date()


class UnknownMember(LookupError):
    """A pair rule names a member the matcher does not know as active (HTTP: 404)."""


class MatcherService:
    """Keeps the read model, proposes tandems, takes decisions.

    ``sink`` replaces Kafka for the outbox relay, ``today`` the calendar (tests pass fakes)."""

    def __init__(
        self,
        settings: MatcherSettings,
        sink: RecordSink | None = None,
        today: Callable[[], dt.date] = utc_today,
    ) -> None:
        self.settings = settings
        self._today = today
        # The configured weights; those staff adopt (PUT /api/weights) are kept in the
        # database and take precedence (see ``services.matcher.weights``).
        self.weights = Weights.parse(settings.weights) if settings.weights else Weights()
        self.engine = make_engine(settings.database_for("matcher"))
        self.sink = sink or kafka_sink(settings, "matcher")
        self.relay = OutboxRelay.of(settings, self.engine, tables.outbox, self.sink)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.solves = 0
        self.last_solve: SolveResult | None = None
        self.consuming = False
        self._solving = False
        #: Where the member-event consumer's handler has got to; the composition that runs the
        #: consumer gives it the broker (``intake.broker``).
        self.intake = Intake(settings.matcher_group_id)
        #: Records waiting to be ingested; a solve waits for them within
        #: ``solve_backlog_max_delay_ms``. ``unconfirmed``: whether the broker has not yet
        #: answered since the last batch that nothing more waits (a burst's round waits for
        #: that too). Both read the consumer through ``intake``; tests replace them.
        self.backlog: Callable[[], int] = self.intake.behind
        self.unconfirmed: Callable[[], bool] = self.intake.unconfirmed
        self._ingesting = 0  # batches being applied (received, so no longer in the backlog)
        self._round_records = 0  # records ingested since the last solve started
        self._last_batch = 0  # records of the last batch ingested

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Migrate, then run the relay and the solver in the background."""
        await migrate(self.engine, MIGRATIONS, "alembic_version_matcher")
        await ensure_lock_row(self.engine)
        self._dirty.set()  # a crash may have left ingested changes unsolved
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="matcher-outbox-relay"),
            asyncio.create_task(self._solve_loop(), name="matcher-solver"),
        ]

    async def stop(self) -> None:
        """Stop background work and close connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # Python 3.11's wait_for can swallow a cancellation that arrives as its awaitable
            # completes (the solver's debounce on a change): cancel until the task is done.
            while not task.done():
                await asyncio.wait([task], timeout=0.1)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        close = getattr(self.sink, "close", None)
        if close is not None:
            await close()
        await self.engine.dispose()

    def mark_consuming(self) -> None:
        """The consumer joined its group (readiness needs it)."""
        self.consuming = True

    async def ready(self) -> dict[str, bool]:
        """Whether the database and the broker answer and the consumer runs."""
        try:
            await self.relay.backlog()
            database = True
        except Exception:
            database = False
        return {"database": database, "broker": self.relay.broker_ok and self.consuming}

    # ingest ---------------------------------------------------------------------------------
    async def ingest(self, deliveries: Sequence[Delivery | Poison]) -> None:
        """Apply a batch of consumed records in one transaction: dedup on the envelope id,
        update the read model, dead-letter what is invalid (undecodable, a key that is not the
        city id, an envelope id used before for other data). Transient database errors are
        retried with backoff; if they persist the error propagates and the batch is delivered
        again (never acknowledged unprocessed)."""
        valid: list[Delivery] = []
        dead: list[DeadLetter] = []
        for delivery in deliveries:
            if isinstance(delivery, Delivery):
                valid.append(delivery)
                continue
            dead.append(dead_letter(delivery, delivery.error, consumer="matcher"))
            log.warning(
                "dead letter",
                extra={"topic": delivery.topic, "offset": delivery.offset,
                       "error": str(delivery.error)[:200]},
            )  # fmt: skip
        self._ingesting += 1  # noted below: the intake's backlog no longer counts them
        self._round_records += len(deliveries)
        self._last_batch = len(deliveries)
        self.intake.note(deliveries)
        try:
            changed, buried = await retry_transient(lambda: self._apply(valid, dead))
        except Exception as error:
            if not refused_by_database(error):
                raise
            changed, buried = await self._apply_one_by_one(valid, dead)
        finally:
            self._ingesting -= 1
        if changed:
            self.request_solve()
        if buried:
            self.relay.wake()

    async def _apply_one_by_one(
        self, events: list[Delivery], dead: list[DeadLetter]
    ) -> tuple[bool, bool]:
        """Apply a batch the database refused record by record: the record it refuses goes
        to the DLQ, the others take effect."""
        changed, buried = await retry_transient(functools.partial(self._apply, [], dead))
        for delivery in events:
            try:
                applied = await retry_transient(functools.partial(self._apply, [delivery], []))
            except Exception as error:
                if not refused_by_database(error):
                    raise
                reason = f"the database refused it ({type(error).__name__})"
                log.warning(
                    "dead letter",
                    extra={"topic": delivery.topic, "offset": delivery.offset, "error": reason},
                )
                letter = dead_letter(delivery, reason, consumer="matcher")
                applied = await retry_transient(functools.partial(self._apply, [], [letter]))
            changed |= applied[0]
            buried |= applied[1]
        return changed, buried

    async def _apply(self, events: list[Delivery], dead: list[DeadLetter]) -> tuple[bool, bool]:
        """Apply the events in order, in one transaction with their dedup records. Consecutive
        member upserts go to the database together (few statements per batch, not per event);
        a departure in between is applied at its place in the order. Returns whether the
        read model changed and whether anything was dead-lettered."""
        changed = False
        dead = list(dead)
        written: list[store.MemberChange] = []
        async with self.engine.begin() as connection:
            digested = [(d, str(d.envelope.id), payload_digest(d.envelope)) for d in events]
            seen = await store.recorded_digests(
                connection, [(i, d.envelope.type, h) for d, i, h in digested]
            )
            upserts: list[PublicMember] = []
            for delivery, event_id, digest in digested:
                if event_id in seen:
                    earlier = seen[event_id]
                    if earlier is not None and earlier != digest:
                        reason = f"envelope id {event_id} was used before for other data"
                        dead.append(dead_letter(delivery, reason, consumer="matcher"))
                        log.warning("dead letter", extra={"topic": delivery.topic,
                                                          "offset": delivery.offset,
                                                          "error": reason})  # fmt: skip
                    continue
                seen[event_id] = digest  # the same event twice in one batch: apply it once
                data = delivery.envelope.data
                if isinstance(data, CityJoined | CityUpdated):
                    upserts.append(data)
                elif isinstance(data, CityLeft):
                    if upserts:
                        changed |= await store.upsert_member(connection, upserts, written)
                        upserts = []
                    changed |= await store.member_left(connection, data.id, data.reason)
            if upserts:
                changed |= await store.upsert_member(connection, upserts, written)
            for letter in dead:
                await enqueue_dead_letter(connection, tables.outbox, letter)
        remember_members(self.engine, written)  # committed: the next solve need not read them
        return changed, bool(dead)

    # solving --------------------------------------------------------------------------------
    def solve_pending(self) -> bool:
        """Whether a change waits for its solve (or a solve is running)."""
        return self._dirty.is_set() or self._solving

    def request_solve(self) -> None:
        """Ask for a re-solve; a burst of requests is coalesced into few solves."""
        self._dirty.set()

    async def solve_now(self) -> SolveResult:
        """Re-solve at once (also used by tests and the bench)."""
        with SOLVE_SECONDS.time():
            result = await replan(self.engine, self.weights, self.today(), self.holder)
        self.solves += 1
        self.last_solve = result
        if result.proposed:
            self.relay.wake()
        return result

    async def _solve_loop(self) -> None:
        """Solve after changes, coalescing them.

        A change waits for a quiet moment of ``solve_debounce_ms`` (but at most
        ``solve_max_delay_ms``) so that a burst becomes one solve. A solve that took longer
        than ``solve_max_delay_ms`` is followed by a pause as long as it took before the next
        one starts: under a long burst at least half of the time then goes to ingesting, so a
        burst of any size becomes a few solves, each taking every change up to its start,
        however long a solve takes (the planning runs in a worker thread, so the consumer
        keeps its group session meanwhile). A burst (a round of ``solve_burst_records`` or
        more, counting the records still to be ingested) waits for its records still to come
        and until the broker answered that nothing more arrived, up to
        ``solve_backlog_max_delay_ms`` after the first change: planning in the middle of a
        burst is work the rest of the burst undoes, and a fast producer leaves the consumer's
        lag at zero between fetches (a burst of 10,000 joins was solved two or three times in
        three of five runs, taking twice as long); a burst that thinned to a steady stream stops
        waiting. Joins one by one wait for the records on their way at most
        ``solve_max_delay_ms``: at a steady rate one usually is.
        """
        loop = asyncio.get_running_loop()
        rule = Coalescing(
            self.settings.solve_debounce_ms / 1000,
            self.settings.solve_max_delay_ms / 1000,
            self.settings.solve_backlog_max_delay_ms / 1000,
            self.settings.solve_burst_records,
        )
        backoff = 0.5
        ended, took = -math.inf, 0.0
        while True:
            await self._dirty.wait()
            first = loop.time()
            # Wait for a quiet moment (or the longest delay) so a burst becomes one solve.
            while True:
                self._dirty.clear()
                wait = rule.quiet_wait(first, loop.time())
                if wait <= 0:
                    break
                try:
                    await asyncio.wait_for(self._dirty.wait(), wait)
                except TimeoutError:
                    break
            # A burst the consumer has not caught up with: its records join this solve.
            while rule.wait_for_backlog(
                first, loop.time(), self.backlog() + self._ingesting, self._round_records,
                self.unconfirmed(), self._last_batch,
            ):  # fmt: skip
                self._solving = True  # waiting for its solve counts as pending
                self._dirty.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), max(rule.debounce, 0.01))
            # After a long solve, leave as much time to ingesting, while there is any.
            while pause := rule.pause_before_solving(
                ended, took, loop.time(), self.backlog() + self._ingesting
            ):
                self._solving = True  # waiting for its solve counts as pending
                await asyncio.sleep(min(pause, max(rule.debounce, 0.01)))
            self._dirty.clear()
            self._solving = True
            self._round_records = 0
            began = loop.time()
            failed = False
            try:
                result = await self.solve_now()
                backoff = 0.5
                log.info(
                    "solved",
                    extra={"proposed": result.proposed, "superseded": result.superseded,
                           "unmatched": result.unmatched},
                )  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("solve failed; retrying in %.1f s", backoff)
                self._dirty.set()
                failed = True
            finally:
                self._solving = False
                ended = loop.time()
                took = ended - began
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)

    # decisions ------------------------------------------------------------------------------
    async def decide(
        self, proposal_id: str, decision: Decision, actor: str, reason: str,
        started: dt.date | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Accept or reject a pending proposal; publishes ``tandem.decided`` and re-solves."""
        row = await decide(
            self.engine, proposal_id, decision, actor, reason, self.today(),
            self.settings.tandem_months, started,
        )  # fmt: skip
        self.relay.wake()
        self.request_solve()
        return row

    async def choose(
        self, proposal_id: str, mentor_id: str, actor: str, reason: str
    ) -> dict[str, Any]:
        """Accept an alternative and reject the current proposal in one step."""
        weights = await weights_in_force(self.engine, self.weights)  # adopted by staff
        row = await choose_alternative(
            self.engine, proposal_id, mentor_id, actor, reason, self.today(),
            self.settings.tandem_months, weights,
        )  # fmt: skip
        self.relay.wake()
        self.request_solve()
        return row

    async def set_pair_rule(self, newcomer_id: str, mentor_id: str, rule: str, actor: str) -> None:
        """Pin or forbid a pair; the next solve honours it."""
        async with self.engine.connect() as connection:
            known = await store.domain_members(connection, [newcomer_id, mentor_id])
        missing = [m for m in (newcomer_id, mentor_id) if m not in known]
        if missing:
            raise UnknownMember(f"no active member {', '.join(missing)}")
        await store.set_pair_rule(self.engine, newcomer_id, mentor_id, rule, actor)
        self.request_solve()

    async def delete_pair_rule(self, newcomer_id: str, mentor_id: str) -> bool:
        """Lift a pin or a ban."""
        removed = await store.delete_pair_rule(self.engine, newcomer_id, mentor_id)
        if removed:
            self.request_solve()
        return removed

    def today(self) -> dt.date:
        """The matcher's notion of today (UTC unless the constructor was given a calendar)."""
        return self._today()
