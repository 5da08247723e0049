"""Consumer plumbing shared by the services: start when the broker is there, records decoded
for the service layer, and a watch that keeps a consumer going when the broker loses its topics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker, KafkaMessage

from services.infra.kafka import KAFKA_TOPICS, recreate_topics
from services.infra.metrics import EVENTS_CONSUMED
from services.infra.records import Consumed, Delivery, Poison, decode_delivery
from services.infra.settings import CommonSettings

log = logging.getLogger(__name__)
#: Longest a consumer's stop may take (leaving its group, closing its connections).
CONSUMER_STOP_SECONDS = 15


def records_of(message: KafkaMessage) -> tuple[Any, ...]:
    """The aiokafka records behind a (batch) message (counted as consumed)."""
    raw = message.raw_message
    records = raw if isinstance(raw, tuple) else (raw,)
    # Counted per topic, not per record: a batch of thousands is one increment per topic.
    for topic, count in Counter(record.topic for record in records).items():
        EVENTS_CONSUMED.labels(topic).inc(count)
    return records


def deliveries_of(message: KafkaMessage) -> tuple[Delivery | Poison, ...]:
    """The records behind a (batch) message, decoded for the service layer: each one's
    envelope, or why it has none (counted as consumed)."""
    return tuple(decode_delivery(record) for record in records_of(message))


def _readable_headers(record: Any) -> Any:
    """``record`` with header values FastStream can decode (it decodes them as UTF-8 before
    any handler runs, so one bad header would stop the partition); the value is untouched."""
    headers = record.headers or ()
    try:
        for _, value in headers:
            (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        fixed = tuple(
            (name, (value or b"").decode("utf-8", "replace").encode()) for name, value in headers
        )
        return dataclasses.replace(record, headers=fixed)
    return record


async def raw_parser(message: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's parser, given records whose headers it can read (values stay bytes)."""
    if isinstance(message, tuple):
        return await original(tuple(_readable_headers(record) for record in message))
    return await original(_readable_headers(message))


async def raw_decoder(message: Any) -> Any:
    """The body as bytes (a list of them for a batch): our code decodes every record
    (``services.infra.records``), so a record FastStream cannot decode (nested 5,000 deep,
    a huge number) never fails before our handler sees it."""
    return message.body


def _partition_states(broker: KafkaBroker, keyed: bool = False) -> dict[str, list[Any]]:
    """Per consumer group, the state of every partition assigned to the broker's consumers
    (with ``keyed``, as ``((topic, partition), state)``), read from aiokafka's internals (no
    entry where they are not as expected)."""
    states: dict[str, list[Any]] = {}
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        group = getattr(consumer, "_group_id", None)
        if consumer is None or group is None:
            continue
        try:
            assignment = consumer._subscription.subscription.assignment
            found = [
                ((tp.topic, tp.partition), assignment.state_value(tp)) if keyed
                else assignment.state_value(tp)
                for tp in consumer.assignment()
            ]  # fmt: skip
        except (AttributeError, KeyError, AssertionError):
            # The positions live in aiokafka's internals; without them there is no figure.
            continue
        states.setdefault(group, []).extend(found)
    return states


def consumer_lag(broker: KafkaBroker) -> dict[str, int]:
    """Records behind the partition ends per consumer group, as far as aiokafka knows them
    (its fetch responses carry each partition's high watermark)."""
    return {
        group: sum(
            max(0, state.highwater - state.position)
            for state in states
            if state is not None and state.has_valid_position and state.highwater is not None
        )
        for group, states in _partition_states(broker).items()
    }


class Intake:
    """How far a consumer group's handler has got, next to what aiokafka fetched: whether
    records of a burst still wait before they reach the service.

    aiokafka's lag (``consumer_lag``) counts from the records it handed out, but FastStream
    holds a batch it took while it parses it, and a lag of zero only says the consumer received
    what it last heard of (a producer sending faster than one fetch round keeps it at zero
    between fetches while more records arrive). So this counts from the handler's own
    position, noted as each batch reaches it, and tells when the broker confirmed that nothing
    more waits: aiokafka sends a partition's next fetch only after its records were handed out
    and keeps a response only for the current position, stamping the partition then
    (``last_poll_timestamp``, milliseconds)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.broker: Callable[[], KafkaBroker | None] = lambda: None
        self._next: dict[tuple[str, int], int] = {}
        self._noted_at = 0.0  # wall clock: the partition stamps are in wall-clock milliseconds

    def note(self, records: Sequence[Consumed]) -> None:
        """A batch reached the handler (in partition order, as consumed)."""
        for record in records:
            if record.partition is not None and record.offset is not None:
                self._next[(record.topic, record.partition)] = record.offset + 1
        self._noted_at = time.time()

    def _states(self) -> list[tuple[tuple[str, int], Any]]:
        broker = self.broker()
        return [] if broker is None else _partition_states(broker, keyed=True).get(self.group, [])

    def _waiting(self, key: tuple[str, int], state: Any) -> int:
        """Records of one partition fetched or known on the broker, not yet at the handler."""
        position = int(state.position)
        end = position if state.highwater is None else max(int(state.highwater), position)
        return max(0, end - self._next.get(key, position))

    def behind(self) -> int:
        """Records fetched or known on the broker that the handler has not received yet."""
        return sum(
            self._waiting(key, state)
            for key, state in self._states()
            if state is not None and state.has_valid_position
        )

    def unconfirmed(self) -> bool:
        """Whether, for some partition, the broker has not yet answered since the last batch
        reached the handler that nothing more waits there (False without aiokafka's figures)."""
        after_ms = int(self._noted_at * 1000)
        for key, state in self._states():
            if state is None or not state.has_valid_position:
                return True
            if state.timestamp is None or state.timestamp <= after_ms:
                return True
            if self._waiting(key, state):
                return True
        return False


def make_broker(settings: CommonSettings, client_id: str) -> KafkaBroker:
    """A FastStream Kafka broker whose per-message logs go to ``tandem.kafka`` at DEBUG."""
    assert settings.broker is not None
    return KafkaBroker(
        settings.broker,
        client_id=client_id,
        logger=logging.getLogger("tandem.kafka"),
        log_level=logging.DEBUG,
        request_timeout_ms=10_000,
        parser=raw_parser,
        decoder=raw_decoder,
        # Ours creates the topics (three partitions; after a broker loss, see recreate_topics).
        # FastStream's own create on subscriber start (one partition) raced a producer's
        # auto-creation of the same topic on the embedded broker and split it in two.
        allow_auto_create_topics=False,
        # Metadata every 10 s instead of 5 min: a topic recreated with other partitions (after a
        # broker loss) makes the consumers rejoin for them within seconds.
        metadata_max_age_ms=10_000,
    )


@dataclass(frozen=True)
class Session:
    """Group session timing: short on the embedded broker, Kafka's defaults elsewhere."""

    timeout_ms: int
    heartbeat_ms: int
    fetch_wait_ms: int = 500  # aiokafka's default


def session_of(settings: CommonSettings) -> Session:
    """The consumer group session of ``settings``."""
    timeout = settings.kafka_session_timeout_ms or 10_000
    fetch_wait = settings.kafka_fetch_max_wait_ms or Session.fetch_wait_ms
    return Session(timeout, max(100, timeout // 10), fetch_wait)


async def run_consumer(broker: KafkaBroker, on_started: Callable[[], None]) -> None:
    """Start consuming as soon as the broker is reachable (retrying with backoff), so a
    service can start before Kafka does."""
    backoff = 0.5
    while True:
        try:
            await broker.start()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("broker not reachable (%s); retrying in %.1f s", error, backoff)
            with contextlib.suppress(Exception):
                await broker.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)
            continue
        on_started()
        return


# ---------------------------------------------------------------------------------------------
# Progress: is a consumer group getting on with the records waiting for it?
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupState:
    """One look at a consumer group: its committed offsets and the records not yet committed."""

    committed: Mapping[tuple[str, int], int]
    waiting: int


@dataclass(frozen=True)
class Observation:
    """What one look at a group says: for how long it has made no progress with records
    waiting, and whether committed offsets it had are gone or went back (the broker lost them:
    a new or emptied broker behind the same address)."""

    stalled_for: float
    offsets_lost: bool
    progressed: bool  # nothing waits, or the committed offsets moved since the last look


@dataclass
class ProgressWatch:
    """Decides from successive :class:`GroupState` looks whether a group is stuck: records wait
    and its committed offsets have not moved for ``stall_seconds`` (a consumer that fetches
    nothing, or one whose commits fail, looks exactly like that). Plain logic, no I/O."""

    stall_seconds: float
    _since: dict[str, float] = field(default_factory=dict)
    _last: dict[str, Mapping[tuple[str, int], int]] = field(default_factory=dict)

    def observe(self, group: str, state: GroupState, now: float) -> Observation:
        """Record a look at ``group`` at time ``now`` (seconds)."""
        previous = self._last.get(group)
        self._last[group] = dict(state.committed)
        lost = previous is not None and any(
            state.committed.get(tp, -1) < offset for tp, offset in previous.items()
        )
        moved = previous is not None and previous != state.committed
        if lost or state.waiting <= 0 or previous is None or moved:
            self._since[group] = now
            return Observation(0.0, lost, progressed=state.waiting <= 0 or (moved and not lost))
        return Observation(now - self._since.setdefault(group, now), False, progressed=False)

    def stuck(self, observation: Observation) -> bool:
        return observation.stalled_for >= self.stall_seconds

    def reset(self) -> None:
        """Start afresh (after the consumer was restarted)."""
        self._since.clear()
        self._last.clear()


def subscriptions(broker: KafkaBroker) -> dict[str, set[str]]:
    """Topics per consumer group of a started FastStream broker (from its aiokafka consumers)."""
    groups: dict[str, set[str]] = {}
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        group = getattr(consumer, "_group_id", None)
        if consumer is None or group is None:
            continue
        groups.setdefault(group, set()).update(consumer.subscription())
    return groups


async def group_state(bootstrap: str, group: str, topics: Sequence[str]) -> GroupState:
    """Committed offsets of ``group`` and how many records of ``topics`` it has not committed
    (a consumer with the group id that never subscribes only reads; it does not join)."""
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        request_timeout_ms=5_000,
    )  # fmt: skip
    try:
        await probe.start()
        await probe.topics()  # fresh metadata
        partitions = [
            TopicPartition(topic, p)
            for topic in sorted(topics)
            for p in sorted(probe.partitions_for_topic(topic) or set())
        ]
        if not partitions:
            return GroupState({}, 0)
        starts = await probe.beginning_offsets(partitions)
        ends = await probe.end_offsets(partitions)
        committed: dict[tuple[str, int], int] = {}
        waiting = 0
        for tp in partitions:
            offset = await probe.committed(tp)
            if offset is not None:
                committed[(tp.topic, tp.partition)] = offset
            waiting += max(0, ends[tp] - max(offset or 0, starts[tp]))
        return GroupState(committed, waiting)
    finally:
        await probe.stop()


# ---------------------------------------------------------------------------------------------
# The supervised consumer
# ---------------------------------------------------------------------------------------------


class SupervisedConsumer:
    """Runs a FastStream consumer and keeps it going through a broker loss.

    Every few seconds it (re)creates the topics the broker lacks (a new or emptied broker knows
    none: commits for them fail, producers wait) and then restarts the consumer, so it rejoins
    its group with the topics as they are now. It also looks at each consumer group's
    progress: a group that makes no progress with records waiting for ``stall_seconds`` makes
    :attr:`problem` say so (``/ready`` answers 503 with it, until the group progresses again)
    and the consumer is restarted too (if that does not help, again after twice as long each
    time). So is a consumer whose group's committed offsets the broker lost.
    """

    def __init__(
        self,
        build: Callable[[], KafkaBroker],
        on_started: Callable[[], None],
        settings: CommonSettings,
        *,
        name: str,
        topics: Sequence[str] = KAFKA_TOPICS,
    ) -> None:
        self._build = build
        self._on_started = on_started
        self._bootstrap = str(settings.broker)
        self._stall = settings.consumer_stall_seconds or 30.0
        self._restart_after = self._stall
        self._check_seconds = max(0.2, min(2.0, self._stall / 4))
        self._topics = tuple(topics)
        self.name = name
        self.broker = build()
        self.problem: str | None = None
        self.restarts = 0

    async def run(self) -> None:
        """Start (retrying until the broker answers), watch, rebuild when stuck; until
        cancelled."""
        watch = ProgressWatch(self._stall)
        while True:
            await run_consumer(self.broker, self._on_started)
            reason = await self._watch(watch)
            log.warning(
                "%s consumer: %s; restarting it to rejoin its group", self.name, reason,
                extra={"consumer": self.name, "reason": reason},
            )  # fmt: skip
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self.broker = self._build()
            self.restarts += 1
            watch.reset()

    async def _watch(self, watch: ProgressWatch) -> str:
        """Check until the consumer has to be restarted; returns why. :attr:`problem` holds
        the reason while a group is stuck, across restarts, until it progresses again."""
        while True:
            await asyncio.sleep(self._check_seconds)
            try:
                missing = await asyncio.wait_for(
                    recreate_topics(self._bootstrap, self._topics), self._check_seconds * 10
                )
                groups = subscriptions(self.broker)
                ours = sorted(t for t in missing if any(t in topics for topics in groups.values()))
                if ours:
                    # A new or emptied broker: a consumer that joined it before the topics were
                    # there holds a stale view (partitions it cannot commit, or none); a fresh
                    # one joins with the topics as they are now.
                    return f"the broker lacked its topics ({', '.join(ours)}), recreated"
                problems: list[str] = []
                progressing = 0
                longest = 0.0
                for group, topics in sorted(groups.items()):
                    state = await asyncio.wait_for(
                        group_state(self._bootstrap, group, sorted(topics)), self._check_seconds * 5
                    )
                    seen = watch.observe(group, state, time.monotonic())
                    if seen.offsets_lost:
                        return f"the broker lost the committed offsets of group {group}"
                    longest = max(longest, seen.stalled_for)
                    if watch.stuck(seen):
                        problems.append(
                            f"consumer group {group} has made no progress for "
                            f"{seen.stalled_for:.0f} s with {state.waiting} records waiting"
                        )
                    elif seen.progressed:
                        progressing += 1
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The broker does not answer: the relay's broker check reports that already.
                log.debug("%s consumer check failed: %r", self.name, error)
                continue
            if problems:
                self.problem = "; ".join(problems)
                if longest >= self._restart_after:
                    # A fresh consumer needs time to join; restarting it again at once would
                    # keep the group rebalancing: wait twice as long each time.
                    self._restart_after = min(self._restart_after * 2, self._stall * 16)
                    return self.problem
            if progressing == len(groups):
                self.problem = None
                self._restart_after = self._stall

    async def stop(self) -> None:
        """Stop the consumer (the task running :meth:`run` is cancelled by the caller), within
        ``CONSUMER_STOP_SECONDS``: a shutdown must end even if the broker does not answer."""
        try:
            await asyncio.wait_for(self.broker.stop(), CONSUMER_STOP_SECONDS)
        except TimeoutError:
            log.warning("consumer %s did not stop in %d s; left behind", self.name,
                        CONSUMER_STOP_SECONDS)  # fmt: skip
        except Exception:  # already stopped, or a broker that is gone: nothing to stop
            pass
