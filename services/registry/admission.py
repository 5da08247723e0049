"""Admission of a member: the network's rules, and the one check every way in applies.

:func:`admission_violations` is plain domain logic (no I/O). :func:`check` is the admission's
decision as the registry takes it, for the HTTP API, ``member.admitted`` and (through the API)
``tandem import`` alike: the gazetteer first (a missing population or missing coordinates
looked up in GeoNames, never guessed), then every rule, all broken ones named at once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.member import MemberRegistration
from services.registry import gazetteer

POPULATION_RANGE = (10_000, 250_000)
MIN_PARTNERS = 3

#: ``"admission_rule"``: a rule of the network (``exception_reason`` lifts it);
#: ``"gazetteer"``: a population that was neither given nor found (nothing lifts that).
ProblemKind = Literal["admission_rule", "gazetteer"]


@dataclass(frozen=True)
class RuleViolation:
    """An admission rule a registration breaks, at the field it concerns."""

    field: str
    message: str
    kind: ProblemKind = "admission_rule"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def admission_violations(member: MemberRegistration) -> list[RuleViolation]:
    """Every admission rule ``member`` breaks; of the rules only a missing population when
    ``exception_reason`` says why they do not apply (real members do not always fit, e.g.
    Bielefeld with over 300,000 inhabitants). A registration still without population (the
    gazetteer fills it in before these rules) is refused whatever the exception."""
    problems: list[RuleViolation] = []
    if member.population is None:
        problems.append(RuleViolation("population", "population is required"))
    if member.exception_reason and member.exception_reason.strip():
        return problems
    return problems + _rules(
        member.population, [p.sector for p in member.partners], member.contact is not None
    )


def body_violations(body: object, invalid: Collection[str]) -> list[RuleViolation]:
    """The admission rules a registration body breaks that the model refused (so
    :func:`admission_violations` never saw it), judged on the fields it gave well-formed:
    fields in ``invalid`` (those with a validation error) and a population not given (the
    gazetteer would look it up) are not judged. Lets a 422 name every problem at once."""
    if not isinstance(body, dict):
        return []
    reason = body.get("exception_reason")
    if isinstance(reason, str) and reason.strip() and "exception_reason" not in invalid:
        return []
    population = body.get("population")
    if "population" in invalid or not isinstance(population, int) or isinstance(population, bool):
        population = None
    partners = body.get("partners", [])
    sectors: list[str] | None = None
    if "partners" not in invalid and isinstance(partners, list):
        sectors = [str(p.get("sector")) for p in partners if isinstance(p, dict)]
    contact = None if "contact" in invalid else body.get("contact") is not None
    return _rules(population, sectors, contact)


def _rules(
    population: int | None, sectors: list[str] | None, has_contact: bool | None
) -> list[RuleViolation]:
    """The rules, each judged only where its value is known (``None``: not judged)."""
    problems: list[RuleViolation] = []
    low, high = POPULATION_RANGE
    if population is not None and not low <= population <= high:
        problems.append(
            RuleViolation(
                "population",
                f"members have {low:,} to {high:,} inhabitants (got {population:,}); "
                "give exception_reason for a documented exception",
            )
        )
    if sectors is not None:
        if len(sectors) < MIN_PARTNERS:
            problems.append(
                RuleViolation(
                    "partners",
                    f"at least {MIN_PARTNERS} partners are needed (got {len(sectors)})",
                )
            )
        for sector, label in (
            ("civil_society", "civil society"), ("administration", "administration"),
        ):  # fmt: skip
            if sector not in sectors:
                problems.append(
                    RuleViolation("partners", f"at least one partner from {label} is needed")
                )
    if has_contact is False:
        problems.append(RuleViolation("contact", "a contact person is needed"))
    return problems


class AdmissionRefused(ValueError):
    """The registration breaks admission rules; :attr:`problems` names every one."""

    def __init__(self, problems: list[RuleViolation]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class Admission:
    """A registration that passed: completed by the gazetteer where it lacked values."""

    member: MemberRegistration
    #: The fields the gazetteer filled in (in :data:`gazetteer.LOOKUP_FIELDS` order).
    looked_up: tuple[str, ...] = ()


def check(member: MemberRegistration, places: gazetteer.Gazetteer | None = None) -> Admission:
    """The admission decision: look up what is missing in the gazetteer, then apply every rule.
    Raises :class:`AdmissionRefused` naming every problem (a population neither given nor
    found first, then the rules in the order of :func:`admission_violations`)."""
    problems: list[RuleViolation] = []
    looked_up: tuple[str, ...] = ()
    try:
        completion = gazetteer.complete(member, places)
    except gazetteer.GazetteerError as error:
        problems.append(RuleViolation("population", str(error), "gazetteer"))
    else:
        member, looked_up = completion.member, completion.looked_up
    problems += [
        v for v in admission_violations(member) if not (problems and v.field == "population")
    ]
    if problems:
        raise AdmissionRefused(problems)
    return Admission(member, looked_up)


def wish_violations(
    member_id: str, wishes: Sequence[str], existing: Collection[str]
) -> list[RuleViolation]:
    """Wished Tandem-Städte must be other members the registry knows (``existing``: those of
    ``wishes`` that are registered)."""
    problems = []
    if member_id in wishes:
        problems.append(RuleViolation("wishes", "a member cannot wish itself"))
    unknown = [w for w in wishes if w not in existing and w != member_id]
    if unknown:
        problems.append(RuleViolation("wishes", f"unknown member(s): {', '.join(unknown)}"))
    return problems
