"""The consumer watch's judgement, without a broker: stuck, progressing, offsets lost; and a
stop that never ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.infra import consumer as consumer_module
from services.infra.consumer import GroupState, ProgressWatch, SupervisedConsumer
from services.infra.settings import CommonSettings

TP = ("city.joined", 0)


def test_records_waiting_and_offsets_still_is_a_stall_that_grows() -> None:
    watch = ProgressWatch(stall_seconds=5)
    first = watch.observe("g", GroupState({TP: 3}, waiting=2), now=100)
    assert first.stalled_for == 0 and not first.progressed  # nothing to compare with yet
    later = watch.observe("g", GroupState({TP: 3}, waiting=2), now=103)
    assert later.stalled_for == 3 and not watch.stuck(later)
    stuck = watch.observe("g", GroupState({TP: 3}, waiting=4), now=106)
    assert stuck.stalled_for == 6 and watch.stuck(stuck) and not stuck.offsets_lost


def test_a_commit_or_an_empty_backlog_is_progress() -> None:
    watch = ProgressWatch(stall_seconds=5)
    watch.observe("g", GroupState({TP: 3}, waiting=2), now=0)
    watch.observe("g", GroupState({TP: 3}, waiting=2), now=9)
    moved = watch.observe("g", GroupState({TP: 4}, waiting=1), now=10)
    assert moved.progressed and moved.stalled_for == 0
    watch.observe("g", GroupState({TP: 4}, waiting=1), now=20)
    idle = watch.observe("g", GroupState({TP: 4}, waiting=0), now=30)
    assert idle.progressed and not watch.stuck(idle)


def test_committed_offsets_that_vanish_or_go_back_are_lost() -> None:
    watch = ProgressWatch(stall_seconds=5)
    watch.observe("g", GroupState({TP: 7, ("city.left", 1): 2}, waiting=0), now=0)
    gone = watch.observe("g", GroupState({}, waiting=6), now=1)  # an emptied broker
    assert gone.offsets_lost and not gone.progressed
    watch.reset()
    watch.observe("g", GroupState({TP: 7}, waiting=0), now=0)
    back = watch.observe("g", GroupState({TP: 5}, waiting=1), now=1)
    assert back.offsets_lost


def test_groups_are_judged_apart() -> None:
    watch = ProgressWatch(stall_seconds=1)
    watch.observe("a", GroupState({TP: 1}, waiting=1), now=0)
    watch.observe("b", GroupState({TP: 1}, waiting=1), now=0)
    assert watch.stuck(watch.observe("a", GroupState({TP: 1}, waiting=1), now=2))
    assert watch.observe("b", GroupState({TP: 2}, waiting=1), now=2).progressed


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
def test_stall_is_the_time_since_the_last_progress(looks: list[tuple[int, int]]) -> None:
    """Brute force: the stall equals now minus the last look that progressed (or the first)."""
    watch = ProgressWatch(stall_seconds=10)
    last_progress = 0.0
    committed_before: int | None = None
    for now, (committed, waiting) in enumerate(looks):
        seen = watch.observe("g", GroupState({TP: committed}, waiting), now=float(now))
        lost = committed_before is not None and committed < committed_before
        if committed_before is None or waiting == 0 or committed != committed_before:
            last_progress = float(now)
        assert seen.offsets_lost == lost
        assert seen.stalled_for == now - last_progress
        committed_before = committed


async def test_a_consumer_that_does_not_stop_is_left_behind_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A shutdown must end even if the broker never answers the consumer's goodbye.
    class Hanging:
        async def stop(self) -> None:
            await asyncio.Event().wait()

    monkeypatch.setattr(consumer_module, "CONSUMER_STOP_SECONDS", 0.05)
    settings = CommonSettings(broker="127.0.0.1:9", database_url=None, data=Path("."))
    supervised = SupervisedConsumer(lambda: Hanging(), lambda: None, settings, name="matcher")  # type: ignore[arg-type,return-value]
    await asyncio.wait_for(supervised.stop(), 5)
    assert "did not stop" in caplog.text
