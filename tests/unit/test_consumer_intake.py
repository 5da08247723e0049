"""The intake's judgement on aiokafka-shaped partition states, without a broker: what the
handler lacks, and when the broker confirmed a burst's end (``tests/integration/test_intake.py``
runs it on the real consumer)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from services.infra.consumer import Intake
from services.infra.records import Consumed

JOINED = [TopicPartition("city.joined", p) for p in range(3)]


def state(position: int, highwater: int | None, answered_ms: float | None) -> SimpleNamespace:
    """A partition as aiokafka keeps it: the next offset it hands out, the broker's end as the
    last fetch response said, and when that response came (wall-clock milliseconds)."""
    stamp = None if answered_ms is None else int(time.time() * 1000 + answered_ms)
    return SimpleNamespace(
        has_valid_position=True, position=position, highwater=highwater, timestamp=stamp
    )


def broker_of(group: str, states: dict[TopicPartition, SimpleNamespace]) -> Any:
    consumer = SimpleNamespace(
        _group_id=group,
        _subscription=SimpleNamespace(
            subscription=SimpleNamespace(assignment=SimpleNamespace(state_value=states.get))
        ),
        assignment=lambda: frozenset(states),
    )
    return SimpleNamespace(subscribers=[SimpleNamespace(consumer=consumer)])


def batch(partition: int, first: int, count: int) -> list[Consumed]:
    return [Consumed("city.joined", partition, first + i, None, b"{}") for i in range(count)]


def test_a_batch_the_consumer_framework_still_holds_is_waiting() -> None:
    # aiokafka handed out offsets up to 100 of partition 0 (its lag is zero), but the handler
    # has had only up to 60: FastStream still parses the rest.
    states = {
        JOINED[0]: state(100, 100, answered_ms=+50),
        JOINED[1]: state(30, 30, answered_ms=+50),
        JOINED[2]: state(0, 0, answered_ms=+50),
    }
    intake = Intake("g")
    intake.broker = lambda: broker_of("g", states)
    intake.note(batch(0, 0, 60) + batch(1, 0, 30))
    assert intake.behind() == 40 and intake.unconfirmed()
    intake.note(batch(0, 60, 40))
    assert intake.behind() == 0 and not intake.unconfirmed()


def test_the_end_is_confirmed_only_by_an_answer_after_the_last_batch() -> None:
    states = {tp: state(50, 50, answered_ms=-5_000) for tp in JOINED}
    intake = Intake("g")
    intake.broker = lambda: broker_of("g", states)
    intake.note(batch(0, 0, 50) + batch(1, 0, 50) + batch(2, 0, 50))
    # Every partition is at its end as last heard, but that was before the batch: the producer
    # may have sent more since.
    assert intake.behind() == 0 and intake.unconfirmed()
    states[JOINED[0]] = state(50, 50, answered_ms=+50)
    assert intake.unconfirmed()  # one partition answered, two not yet
    for tp in JOINED[1:]:
        states[tp] = state(50, 50, answered_ms=+50)
    assert not intake.unconfirmed()
    states[JOINED[2]] = state(50, 80, answered_ms=+60)  # a later answer brought 30 more
    assert intake.behind() == 30 and intake.unconfirmed()


def test_other_groups_and_consumers_without_figures_do_not_count() -> None:
    intake = Intake("g")
    assert intake.behind() == 0 and not intake.unconfirmed()  # no broker yet
    intake.broker = lambda: broker_of("advice", {JOINED[0]: state(0, 900, answered_ms=None)})
    assert intake.behind() == 0 and not intake.unconfirmed()
    intake.broker = lambda: SimpleNamespace(subscribers=[SimpleNamespace(consumer=None)])
    assert intake.behind() == 0 and not intake.unconfirmed()
    # Assigned but never fetched: nothing is known to wait, and nothing confirmed the end.
    intake.broker = lambda: broker_of("g", {JOINED[0]: state(0, None, answered_ms=None)})
    assert intake.behind() == 0 and intake.unconfirmed()
