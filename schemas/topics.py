"""The topic vocabulary shared by interests, strengths and advice requests.

Operators may extend it with ``TANDEM_EXTRA_TOPICS`` (comma-separated slugs); values outside the
vocabulary are refused at the edges (422 over HTTP, the DLQ on events). Each built-in topic's
German label (``"Digitalisierung"``) is accepted as input too and stands for its slug.
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

#: German labels: shown to programme staff, and accepted as input for the slug.
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

_SLUG_OF_LABEL: dict[str, str] = {label.casefold(): slug for slug, label in TOPIC_LABELS_DE.items()}

_SLUG = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


#: The process environment's own mapping (bytes to bytes on POSIX), read directly: asking
#: ``os.environ`` for an unset variable raises and catches a KeyError inside (about 2 µs here),
#: and every validated member asks twice (interests, strengths): 5 of the 22 µs a city.joined
#: record took to validate. Whatever changes ``os.environ`` (assignment, ``putenv`` through it,
#: pytest's monkeypatch) changes this mapping too. Elsewhere ``os.environ`` is asked.
_ENVIRON: dict[bytes, bytes] | None = (
    getattr(os.environ, "_data", None) if os.name == "posix" else None
)
_EXTRA_TOPICS = "TANDEM_EXTRA_TOPICS"
_EXTRA_TOPICS_KEY = os.fsencode(_EXTRA_TOPICS)


def _extra_topics() -> bytes | str | None:
    """The raw value of ``TANDEM_EXTRA_TOPICS`` (None when unset)."""
    if _ENVIRON is not None:
        return _ENVIRON.get(_EXTRA_TOPICS_KEY)
    return os.environ.get(_EXTRA_TOPICS)


#: The last vocabulary built and the raw ``TANDEM_EXTRA_TOPICS`` value it was built from:
#: every validated topic list asks for the vocabulary, so it is built again only when the
#: variable changed (an invalid value is never kept: it raises on every call).
_last_vocabulary: tuple[bytes | str | None, frozenset[str]] = (None, frozenset(TOPICS))


def topic_vocabulary() -> frozenset[str]:
    """The topics accepted now: the built-in ones plus ``TANDEM_EXTRA_TOPICS``."""
    global _last_vocabulary
    raw = _extra_topics()
    built_from, vocabulary = _last_vocabulary
    if raw == built_from:
        return vocabulary
    extra = os.fsdecode(raw) if isinstance(raw, bytes) else (raw or "")
    added = {t.strip() for t in extra.split(",") if t.strip()}
    bad = sorted(t for t in added if not _SLUG.match(t))
    if bad:
        raise ValueError(f"TANDEM_EXTRA_TOPICS holds invalid topic slugs: {', '.join(bad)}")
    vocabulary = frozenset(TOPICS) | frozenset(added)
    _last_vocabulary = (raw, vocabulary)
    return vocabulary


def topic_slug(value: str, vocabulary: frozenset[str] | None = None) -> str | None:
    """The slug ``value`` names: a slug of the vocabulary (default: :func:`topic_vocabulary`),
    or the German label of a built-in topic (case and surrounding blanks do not matter, e.g.
    ``"Digitalisierung"``); ``None`` if it names no topic."""
    if vocabulary is None:
        vocabulary = topic_vocabulary()
    if value in vocabulary:
        return value
    key = value.strip().casefold()
    for slug in vocabulary:
        if slug.casefold() == key:
            return slug
    return _SLUG_OF_LABEL.get(key)


def sorted_vocabulary() -> list[str]:
    """The vocabulary in a stable order: the built-in topics as listed, then the added ones."""
    extra = sorted(topic_vocabulary() - frozenset(TOPICS))
    return [*TOPICS, *extra]


def topic_choices() -> list[str]:
    """Every topic as ``"slug (German label)"``, for error messages."""
    return [f"{t} ({topic_label(t)})" for t in sorted_vocabulary()]


def topic_label(topic: str) -> str:
    """German label of a topic (the slug itself for operator-added topics)."""
    return TOPIC_LABELS_DE.get(topic, topic.replace("_", " "))
