"""The topic vocabulary shared by interests, strengths and advice requests.

Operators may extend it with ``TANDEM_EXTRA_TOPICS`` (comma-separated slugs); values outside the
vocabulary are refused at the edges (422 over HTTP, the DLQ on events).
"""

from __future__ import annotations

import os
import re

TOPICS: tuple[str, ...] = (
    "digitalisation",
    "sustainability",
    "generational_change",
    "new_forms_of_engagement",
    "participation",
    "democracy",
    "young_engagement",
    "volunteer_recruitment",
    "qualification",
    "recognition",
    "engagement_strategy",
    "networking",
)

#: German labels, for reasons shown to programme staff.
TOPIC_LABELS_DE: dict[str, str] = {
    "digitalisation": "Digitalisierung",
    "sustainability": "Nachhaltigkeit",
    "generational_change": "Generationenwechsel",
    "new_forms_of_engagement": "neue Engagementformen",
    "participation": "Beteiligung",
    "democracy": "Demokratie",
    "young_engagement": "junges Engagement",
    "volunteer_recruitment": "Gewinnung von Engagierten",
    "qualification": "Qualifizierung",
    "recognition": "Anerkennung",
    "engagement_strategy": "Engagementstrategie",
    "networking": "Vernetzung",
}

_SLUG = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


def topic_vocabulary() -> frozenset[str]:
    """The topics accepted now: the built-in ones plus ``TANDEM_EXTRA_TOPICS``."""
    extra = os.environ.get("TANDEM_EXTRA_TOPICS", "")
    added = {t.strip() for t in extra.split(",") if t.strip()}
    bad = sorted(t for t in added if not _SLUG.match(t))
    if bad:
        raise ValueError(f"TANDEM_EXTRA_TOPICS holds invalid topic slugs: {', '.join(bad)}")
    return frozenset(TOPICS) | frozenset(added)


def topic_label(topic: str) -> str:
    """German label of a topic (the slug itself for operator-added topics)."""
    return TOPIC_LABELS_DE.get(topic, topic.replace("_", " "))
