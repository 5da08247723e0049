"""The matcher's own memory: ``tandem matcher`` alone in its process, peak RSS (``VmHWM``).

The network: ``members`` in all, a tenth of them the newest cohort seeking a tandem (about the
share a yearly cohort has in the real network), the rest joined 2015-2023. They arrive as
``city.joined`` on a fresh embedded broker; the peak is read once the matcher has planned every
newcomer and published its proposals, so it includes ingesting and the joint solve.
"""

from __future__ import annotations

from typing import Any

import httpx

from schemas.events import Topics
from services.bench.harness import producer, running_broker, send_all, service_running
from services.bench.pipeline import joined_messages, settle
from services.bench.synthetic import generate

NEWCOMER_SHARE = 0.1


async def run(members: int) -> dict[str, Any]:
    """Peak RSS of a matcher that ingested ``members`` and solved for its newcomers."""
    newcomers = max(1, round(members * NEWCOMER_SHARE))
    messages = joined_messages(
        generate(members - newcomers, newcomers=False, prefix="mentor")
        + generate(newcomers, newcomers=True, prefix="newcomer")
    )
    async with running_broker() as broker:
        async with (
            service_running("matcher", broker.bootstrap) as matcher,
            httpx.AsyncClient(timeout=30) as client,
        ):
            idle = matcher.peak_rss_mb()
            sender = producer(broker.bootstrap)
            await sender.start()
            try:
                await send_all(sender, Topics.CITY_JOINED, messages)
            finally:
                await sender.stop()
            await settle(client, matcher, None, members, newcomers, timeout=600)
            peak = matcher.peak_rss_mb()
            now = matcher.rss_mb()
    return {
        "members": members,
        "newcomers": newcomers,
        "matcher_rss_mb": peak,
        "matcher_rss_after_mb": now,
        "matcher_idle_rss_mb": idle,
    }
