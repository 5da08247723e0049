"""Admission rules of the network (plain domain logic, no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from schemas.member import MemberRegistration

POPULATION_RANGE = (10_000, 250_000)
MIN_PARTNERS = 3


@dataclass(frozen=True)
class RuleViolation:
    """An admission rule a registration breaks, at the field it concerns."""

    field: str
    message: str


def admission_violations(member: MemberRegistration) -> list[RuleViolation]:
    """The admission rules ``member`` breaks; none when ``exception_reason`` says why they do
    not apply (real members do not always fit, e.g. Bielefeld with over 300,000 inhabitants).
    A registration still without population (the gazetteer fills it in before these rules) is
    refused whatever the exception."""
    if member.population is None:
        return [RuleViolation("population", "population is required")]
    if member.exception_reason and member.exception_reason.strip():
        return []
    problems: list[RuleViolation] = []
    low, high = POPULATION_RANGE
    if not low <= member.population <= high:
        problems.append(
            RuleViolation(
                "population",
                f"members have {low:,} to {high:,} inhabitants (got {member.population:,}); "
                "give exception_reason for a documented exception",
            )
        )
    sectors = [p.sector for p in member.partners]
    if len(sectors) < MIN_PARTNERS:
        problems.append(
            RuleViolation(
                "partners",
                f"at least {MIN_PARTNERS} partners are needed (got {len(sectors)})",
            )
        )
    for sector, label in (("civil_society", "civil society"), ("administration", "administration")):
        if sector not in sectors:
            problems.append(
                RuleViolation("partners", f"at least one partner from {label} is needed")
            )
    if member.contact is None:
        problems.append(RuleViolation("contact", "a contact person is needed"))
    return problems


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
