"""When the matcher re-plans: changes are coalesced so that a burst becomes few solves.

Plain arithmetic on times (seconds on any monotonic clock), so the rule is tested with a clock
the test moves (``tests/service/test_coalescing.py``); ``MatcherService``'s solve loop asks it
with the event loop's clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coalescing:
    """A change waits for a quiet moment of ``debounce`` seconds, but at most ``max_delay``
    after the first change of its round (``backlog_max_delay`` while records of the burst still
    wait to be ingested); a solve that took longer than ``max_delay`` is followed by a pause as
    long as it took while records wait to be ingested, so under a long burst at least half of
    the time goes to ingesting (with nothing left to ingest the pause would only delay)."""

    debounce: float
    max_delay: float
    #: While records wait to be ingested (a burst the consumer has not caught up with), the
    #: solve waits for them too, but at most this long after the first change: a solve in the
    #: middle of a burst plans newcomers whose plan the rest of the burst changes again.
    backlog_max_delay: float = 0.0
    #: A round of at least this many records, counting those still to be ingested, is a burst:
    #: it waits for the records the consumer knows to wait and until the consumer heard from
    #: the broker that nothing more arrived, within ``backlog_max_delay`` (a producer faster
    #: than one fetch round leaves the consumer's lag at zero between fetches). A smaller round
    #: (joins one by one) waits for the records on their way at most ``max_delay``: at a steady
    #: rate one usually is, and an early solve of a few newcomers costs little.
    burst_records: int = 100

    @property
    def burst_batch(self) -> int:
        """A burst has thinned to a steady stream once its last batch and the records still
        to be ingested are each fewer than a tenth of ``burst_records``: it stops waiting then.
        Otherwise a matcher that fell behind a steady 50 joins/s (stopped for 2 s) made a burst
        of the records it caught up on and waited up to ``backlog_max_delay`` for a
        confirmation that a steady stream rarely gives (joins waited up to 5.3 s)."""
        return max(1, self.burst_records // 10)

    def quiet_wait(self, first_change: float, now: float) -> float:
        """How long to wait for further changes before solving (0: solve now)."""
        remaining = self.max_delay - (now - first_change)
        return 0.0 if remaining <= 0 else min(self.debounce, remaining)

    def pause_before_solving(
        self, last_ended: float, last_took: float, now: float, backlog: int
    ) -> float:
        """How long to leave to ingesting before the next solve starts (0: none), with
        ``backlog`` records still to be ingested (asked again as it changes)."""
        if last_took <= self.max_delay or backlog <= 0:
            return 0.0
        return max(0.0, last_ended + last_took - now)

    def wait_for_backlog(
        self, first_change: float, now: float, backlog: int, records: int = 0,
        unconfirmed: bool = False, last_batch: int = 0,
    ) -> bool:  # fmt: skip
        """Whether to keep waiting for the ``backlog`` records still to be ingested. A burst
        (the round's ``records`` and the backlog make ``burst_records``) also waits while the
        consumer has not yet heard that nothing more arrived (``unconfirmed``), at most
        ``backlog_max_delay`` after the first change of the round, unless it has thinned to a
        steady stream (``last_batch`` and ``backlog`` below ``burst_batch``); a smaller round
        waits for its backlog at most ``max_delay`` (never longer than ``backlog_max_delay``)."""
        burst = records + backlog >= self.burst_records
        if not burst:
            return backlog > 0 and now - first_change < min(self.max_delay, self.backlog_max_delay)
        if now - first_change >= self.backlog_max_delay:
            return False
        if last_batch < self.burst_batch and backlog < self.burst_batch:
            return False  # thinned to a steady stream: waiting would only hold it back
        return backlog > 0 or unconfirmed
