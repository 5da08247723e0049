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
    #: A round of at least this many records is a burst: besides the records the consumer knows
    #: to wait, it waits until the consumer heard from the broker that nothing more arrived
    #: (also within ``backlog_max_delay``): a producer faster than one fetch round leaves the
    #: consumer's lag at zero between fetches. A smaller round (joins one by one) is solved
    #: after its quiet moment: at a steady rate most fetches bring a record, and waiting for one
    #: that brings none would hold every join back.
    burst_records: int = 100

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
        unconfirmed: bool = False,
    ) -> bool:  # fmt: skip
        """Whether to keep waiting because ``backlog`` records are still to be ingested, or
        because the round's ``records`` make it a burst whose end is ``unconfirmed`` (the
        consumer has not yet heard that nothing more waits); at most ``backlog_max_delay``
        after the first change of the round."""
        if now - first_change >= self.backlog_max_delay:
            return False
        return backlog > 0 or (unconfirmed and records >= self.burst_records)
