"""Which vocabulary topics a free-text question mentions: a German (and English) keyword matcher.

``question_topics`` reads a coordinator's question ("Wie finden wir junge Ehrenamtliche?") and
returns the topics it names, each with the words that named them. The advice ranking
(``advice``) counts these topics as wanted, with a lower weight than the ones chosen explicitly.
Matching is by keyword (``TOPIC_KEYWORDS``), case- and umlaut-tolerant, with stems that match
inside German compounds; it knows nothing about members or scores.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.topics import TOPICS, topic_vocabulary

#: Keywords per topic (German and English), written naturally; they are folded like the text
#: (lower case, ä -> ae, ß -> ss, accents dropped) when the module loads. Notation:
#:
#: * ``stem``: occurs anywhere in a word, so German compounds match ("Jugendbeteiligung"
#:   contains "jugend" and "beteilig"). Used for stems long enough not to occur by chance.
#: * ``^stem``: a word (or a part of a hyphenated word) starts with it; for short or ambiguous
#:   stems ("^jung" must not match inside unrelated words).
#: * ``=word``: the whole word (or a hyphenated part) equals it ("=app", "=ki").
#: * ``a+b``: the terms in this order, each matched as above, at most ``PHRASE_WINDOW`` words
#:   apart ("Ehrenamtliche finden", "finden wir neue Ehrenamtliche").
TOPIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "digitalisation": (
        "^digital", "^digitiz", "^digitis", "online", "plattform", "platform", "=app", "=apps",
        "software", "internet", "^web", "^homepage", "^virtuell", "^virtual", "^video", "=ki",
        "künstlich+intelligenz", "artificial+intelligence", "social+media", "sozial+medien",
        "^messenger",
    ),
    "sustainability": (
        "nachhaltig", "sustainab", "klima", "climate", "umwelt", "environment", "=sdg", "=sdgs",
        "^ökolog", "^ecolog", "energiewende", "^co2", "agenda+=2030", "biodivers", "^recycl",
        "^fairtrade", "mobilitätswende",
    ),
    "generational_change": (
        "generation", "=nachfolge", "nachfolger", "nachfolgeplan", "nachfolgeregel",
        "^nachwuchs", "^verjüngung", "übergabe", "succession", "^successor", "^ruhestand",
        "^retire", "^boomer",
    ),
    "new_forms_of_engagement": (
        "engagementform", "engagementsform", "neu+^form+engagement", "=new+^form", "^spontan",
        "kurzzeit", "kurzfristig", "projektbezogen", "projektorientiert", "episod",
        "microvolunteer", "mikroengagement", "^flexib", "^informell", "^informal",
        "corporate+volunteer", "^ungebunden",
    ),
    "participation": (
        "beteilig", "partizip", "participat", "^mitbestimm", "^mitwirk", "^mitsprache",
        "^mitgestalt", "bürgerrat", "bürgerhaushalt", "bürgerdialog", "^teilhabe",
        "^einbezieh",
    ),
    "democracy": (
        "demokrat", "democra", "extremis", "populis", "wahlbeteilig", "polarisier", "polarisation",
        "polarization", "^hass", "hate+speech", "politisch+bildung", "political+education",
        "desinformation", "disinformation", "verschwörung", "^zivilcourage", "^antisemit",
        "^rassis", "^racis",
    ),
    "young_engagement": (
        "jugend", "^jung", "youth", "^young", "^schüler", "^student", "^studierend", "^azubi",
        "auszubildend", "^teen", "^juleica", "=fsj",
    ),
    "volunteer_recruitment": (
        "^gewinn", "gewinnung", "^gewonnen", "^rekrut", "recruit", "^anwerb", "^werben",
        "mitgliederwerb", "ehrenamtlich+^find", "^find+ehrenamtlich", "freiwillig+^find",
        "^find+freiwillig", "engagiert+^find", "^find+engagiert", "helfer+^find",
        "^find+helfer", "mitglied+^find", "^find+mitglied", "^find+volunteer",
        "^attract+volunteer", "=new+^volunteer", "^neu+ehrenamtlich", "^neu+freiwillig",
        "ehrenamtsbörse", "freiwilligenbörse", "engagementbörse",
    ),
    "qualification": (
        "qualifi", "^fortbild", "^weiterbild", "^schulung", "^training", "^workshop",
        "^seminar", "^kompetenz", "^coaching", "ausbildung", "^juleica", "^skill",
    ),
    "recognition": (
        "anerkenn", "wertschätz", "^würdig", "=ehrung", "=ehrungen", "^auszeichn",
        "^dankeschön", "^danksag", "dankeskultur", "ehrenamtskarte", "ehrenamtscard",
        "engagementpreis", "ehrenamtspreis", "bürgerpreis", "^recogni", "^appreciat", "^award",
    ),
    "engagement_strategy": (
        "strateg", "^leitbild", "engagementpolitik", "engagementförder", "^verstetig",
        "infrastruktur", "^gesamtkonzept", "^roadmap",
    ),
    "networking": (
        "vernetz", "netzwerk", "network", "^kooperation", "^kooperier", "^cooperat",
        "^collaborat", "zusammenarbeit", "^bündnis", "^allianz", "^partnerschaft", "trisektor",
        "sektorenübergreif", "sektorübergreif",
    ),
}  # fmt: skip

#: Words that never count: "das Netzwerk" is how coordinators name the Engagierte Stadt
#: network itself ("Wer im Netzwerk hat ..."), not the topic of networking.
IGNORED_WORDS = frozenset({"netzwerk", "netzwerks", "network"})
#: Largest distance in words between the first and the last term of a phrase keyword.
PHRASE_WINDOW = 4

_WORD = re.compile(r"\w+(?:[-‐]\w+)*")
_SENTENCE_END = re.compile(r"[.!?;:]")


def _fold(text: str) -> str:
    """Lower case, umlauts spelt out (ä -> ae, ß -> ss), other accents dropped."""
    text = unicodedata.normalize("NFC", text).casefold()
    text = text.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue").replace("‐", "-")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True, slots=True)
class _Term:
    """One word pattern: ``mode`` is ``"in"`` (substring), ``"^"`` (prefix) or ``"="``."""

    mode: str
    text: str

    @staticmethod
    def parse(raw: str) -> _Term:
        if raw[:1] in "^=":
            return _Term(raw[0], _fold(raw[1:]))
        return _Term("in", _fold(raw))

    def matches(self, joined: str, parts: tuple[str, ...]) -> bool:
        """Whether a folded word (``joined`` without hyphens, and its ``parts``) matches."""
        if self.mode == "in":
            return self.text in joined
        if self.mode == "^":
            return any(part.startswith(self.text) for part in parts)
        return self.text == joined or self.text in parts


@dataclass(frozen=True, slots=True)
class _Word:
    """A word of the question: its span in the original text and its folded forms."""

    start: int
    end: int
    joined: str  # folded, hyphens removed ("online-plattform" -> "onlineplattform")
    parts: tuple[str, ...]  # folded parts of a hyphenated word, or the word itself
    sentence: int  # phrases do not reach across sentences


def _compile(keywords: Iterable[str]) -> tuple[tuple[_Term, ...], ...]:
    return tuple(tuple(_Term.parse(term) for term in keyword.split("+")) for keyword in keywords)


_COMPILED: dict[str, tuple[tuple[_Term, ...], ...]] = {
    topic: _compile(keywords) for topic, keywords in TOPIC_KEYWORDS.items()
}


def _keywords_of(topic: str) -> tuple[tuple[_Term, ...], ...]:
    """The compiled keywords of a topic; for operator-added topics their slug's words."""
    slug = (f"={topic}",)
    if topic in _COMPILED:
        return _COMPILED[topic] + _compile(slug)
    words = [w for w in topic.split("_") if w]
    phrase = "+".join(f"^{w}" for w in words)
    return _compile((*slug, phrase) if phrase else slug)


def question_topics(question: str) -> dict[str, list[str]]:
    """Topics the free-text question mentions, each with the words of the question that did.

    Words are matched against ``TOPIC_KEYWORDS`` (German and English stems and words per
    topic) and against the topic slugs themselves, case-insensitively and umlaut-tolerantly
    ("Schüler", "Schueler" and "SCHÜLER" are the same). Stems match inside German compounds,
    so "Jugendbeteiligung" gives ``young_engagement`` and ``participation``. Topics come in
    vocabulary order, words in the order they first occur, as written in the question.
    """
    words = []
    sentence, previous_end = 0, 0
    for found_word in _WORD.finditer(question):
        sentence += len(_SENTENCE_END.findall(question, previous_end, found_word.start()))
        previous_end = found_word.end()
        folded = _fold(found_word.group())
        if folded not in IGNORED_WORDS:
            words.append(
                _Word(
                    start=found_word.start(),
                    end=found_word.end(),
                    joined=folded.replace("-", ""),
                    parts=tuple(folded.split("-")),
                    sentence=sentence,
                )
            )
    if not words:
        return {}
    vocabulary = topic_vocabulary()
    ordered = [t for t in TOPICS if t in vocabulary] + sorted(vocabulary - set(TOPICS))
    hits = _Hits(words)
    found: dict[str, list[str]] = {}
    for topic in ordered:
        spans = sorted({span for keyword in _keywords_of(topic) for span in hits.spans(keyword)})
        # A span inside a longer one of the same topic ("neue Ehrenamtliche" inside "finden
        # wir neue Ehrenamtliche") adds nothing; a word written twice (in any case or
        # spelling) is one mention, as first written.
        unique: dict[str, str] = {}
        for start, end in spans:
            if any(s <= start and end <= e and (s, e) != (start, end) for s, e in spans):
                continue
            unique.setdefault(_fold(question[start:end]), question[start:end])
        if unique:
            found[topic] = list(unique.values())
    return found


class _Hits:
    """Where the terms occur among the question's words. Each term is tested once per
    distinct word form (a long question repeats words; keywords share terms such as "^find")."""

    def __init__(self, words: Sequence[_Word]) -> None:
        self.words = words
        self.forms: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for i, word in enumerate(words):
            self.forms.setdefault((word.joined, word.parts), []).append(i)
        self.cache: dict[_Term, list[int]] = {}

    def positions(self, term: _Term) -> list[int]:
        """Indexes of the words ``term`` matches, ascending."""
        if term not in self.cache:
            self.cache[term] = sorted(
                i
                for (joined, parts), at in self.forms.items()
                if term.matches(joined, parts)
                for i in at
            )
        return self.cache[term]

    def spans(self, keyword: tuple[_Term, ...]) -> list[tuple[int, int]]:
        """Spans (start, end in the question) where ``keyword`` occurs."""
        words = self.words
        hits = [self.positions(term) for term in keyword]
        if len(keyword) == 1:
            return [(words[i].start, words[i].end) for i in hits[0]]
        found: dict[int, int] = {}  # last word -> first word of the shortest span ending there
        for first in hits[0]:
            # The earliest ordered continuation within the window and the sentence, if any.
            chain = [first]
            for positions in hits[1:]:
                later = [
                    p
                    for p in positions
                    if chain[-1] < p <= first + PHRASE_WINDOW
                    and words[p].sentence == words[first].sentence
                ]
                if not later:
                    break
                chain.append(later[0])
            else:
                found[chain[-1]] = max(found.get(chain[-1], first), first)
        return [(words[first].start, words[last].end) for last, first in found.items()]
