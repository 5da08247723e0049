"""The matcher's coalescing rule with a clock the test moves: a burst becomes few solves, no
change waits longer than the longest delay (plus a quiet moment), a long solve leaves time to
ingest."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.matcher.coalescing import Coalescing

RULE = Coalescing(debounce=0.010, max_delay=0.100)


def solves_for(
    changes: list[float], rule: Coalescing, solve_takes: float = 0.0, backlog: int = 1
) -> list[float]:
    """When solves start for changes arriving at ``changes`` (sorted seconds), driven as the
    solve loop drives the rule: wait for a quiet moment, pause after a long solve (while
    ``backlog`` records wait to be ingested), solve."""
    starts: list[float] = []
    pending = sorted(changes)
    ended, took = float("-inf"), 0.0
    while pending:
        first = now = max(pending.pop(0), ended)  # the loop waits for changes between solves
        while True:
            wait = rule.quiet_wait(first, now)
            if wait <= 0:
                break
            if pending and pending[0] <= now + wait:  # another change within the wait
                now = pending.pop(0)
                continue
            now += wait
            break
        now += rule.pause_before_solving(ended, took, now, backlog)
        while pending and pending[0] <= now:  # changes during the pause join this solve
            pending.pop(0)
        starts.append(now)
        ended, took = now + solve_takes, solve_takes
    return starts


def test_one_change_is_solved_after_a_quiet_moment() -> None:
    assert solves_for([1.0], RULE) == [1.0 + RULE.debounce]


def test_a_burst_that_never_pauses_is_solved_at_the_longest_delay() -> None:
    burst = [i * 0.005 for i in range(100)]  # every 5 ms for half a second: never quiet
    starts = solves_for(burst, RULE)
    assert starts[0] == RULE.max_delay
    assert len(starts) <= 6  # 0.5 s of changes in rounds of at most 0.1 s


def test_a_long_solve_is_followed_by_as_long_a_pause() -> None:
    # The first solve starts at 0.01 and takes 0.5 s: a change at 0.3 is solved only after a
    # pause as long as that solve, at 0.51 + 0.5.
    assert solves_for([0.0, 0.3], RULE, solve_takes=0.5) == pytest.approx([0.01, 1.01])
    pause = RULE.pause_before_solving
    assert pause(last_ended=10.0, last_took=0.5, now=10.2, backlog=1) == pytest.approx(0.3)
    assert pause(last_ended=10.0, last_took=0.05, now=10.0, backlog=1) == 0.0
    assert pause(last_ended=10.0, last_took=0.5, now=11.0, backlog=1) == 0.0


def test_with_nothing_left_to_ingest_a_long_solve_is_followed_by_no_pause() -> None:
    # The consumer caught up during the long solve: the change at 0.3 is solved right after it
    # (a quiet moment after its end), not after a pause that would leave time to nobody.
    assert solves_for([0.0, 0.3], RULE, solve_takes=0.5, backlog=0) == pytest.approx([0.01, 0.52])
    assert RULE.pause_before_solving(last_ended=10.0, last_took=0.5, now=10.2, backlog=0) == 0.0


@given(st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), min_size=1, max_size=60))
def test_no_change_waits_longer_than_the_longest_delay(changes: list[float]) -> None:
    starts = solves_for(changes, RULE)
    for change in changes:
        solved = min(s for s in starts if s >= change)
        assert solved - change <= RULE.max_delay + 1e-9
    # A solve starts only after a quiet moment or at the longest delay: never more solves than
    # changes, and never two within one quiet moment.
    assert len(starts) <= len(changes)
    assert all(b - a >= RULE.debounce - 1e-9 for a, b in itertools.pairwise(starts))


def test_a_burst_still_to_be_ingested_is_waited_for_within_its_longest_delay() -> None:
    rule = Coalescing(debounce=0.010, max_delay=0.100, backlog_max_delay=3.0)
    assert rule.wait_for_backlog(first_change=0.0, now=0.5, backlog=4_000)
    assert not rule.wait_for_backlog(first_change=0.0, now=0.5, backlog=0)  # caught up
    assert not rule.wait_for_backlog(first_change=0.0, now=3.0, backlog=4_000)  # waited enough
    assert not RULE.wait_for_backlog(first_change=0.0, now=0.0, backlog=1)  # off by default


def test_a_burst_waits_until_the_broker_confirmed_its_end() -> None:
    # A lag of zero between two fetches of a fast burst is no end of it: a round of at least
    # ``burst_records`` waits until the broker answered that nothing more arrived.
    rule = Coalescing(debounce=0.010, max_delay=0.100, backlog_max_delay=3.0, burst_records=100)
    wait = rule.wait_for_backlog
    big = 1_500  # the last batch: records arrive faster than one fetch round
    assert wait(
        first_change=0.0, now=0.5, backlog=0, records=4_000, unconfirmed=True, last_batch=big
    )
    assert not wait(
        first_change=0.0, now=0.5, backlog=0, records=4_000, unconfirmed=False, last_batch=big
    )
    assert not wait(
        first_change=0.0, now=3.0, backlog=0, records=4_000, unconfirmed=True, last_batch=big
    )
    # Joins one by one: a record is usually on its way, and waiting for none would hold every
    # join back; the few known to come are waited for within the longest delay only.
    assert not wait(
        first_change=0.0, now=0.05, backlog=0, records=99, unconfirmed=True, last_batch=1
    )
    assert wait(first_change=0.0, now=0.05, backlog=2, records=3, unconfirmed=True, last_batch=1)
    assert not wait(first_change=0.0, now=0.1, backlog=2, records=3, unconfirmed=True, last_batch=1)
    assert wait(
        first_change=0.0, now=0.05, backlog=0, records=100, unconfirmed=True, last_batch=100
    )
    assert wait(first_change=0.0, now=0.5, backlog=90, records=10, unconfirmed=False, last_batch=10)


def test_a_burst_that_thinned_to_a_steady_stream_waits_no_longer() -> None:
    # A matcher that fell behind a steady stream catches up with a big batch, then gets the
    # joins one by one again: most fetches bring one, so the broker rarely confirms an end,
    # and the round (a burst by its records) would wait until the longest backlog delay.
    rule = Coalescing(debounce=0.010, max_delay=0.100, backlog_max_delay=3.0, burst_records=100)
    assert rule.burst_batch == 10
    wait = rule.wait_for_backlog
    assert wait(first_change=0.0, now=0.1, backlog=0, records=103, unconfirmed=True, last_batch=72)
    assert not wait(
        first_change=0.0, now=0.1, backlog=1, records=105, unconfirmed=True, last_batch=1
    )
    # Records still known to come in numbers keep it waiting, whatever the last batch was.
    assert wait(first_change=0.0, now=0.1, backlog=400, records=105, unconfirmed=True, last_batch=1)
