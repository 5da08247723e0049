"""``tandem demo``: the main job, exactly as the README runs it."""

from __future__ import annotations

import subprocess

import pytest

from services.demo.network import load_network
from tests.e2e.conftest import tandem_command

ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}


@pytest.mark.slow
def test_demo_replays_the_history_and_prints_the_2024_proposals_and_advice() -> None:
    result = subprocess.run(
        [*tandem_command(), "demo"], capture_output=True, text=True, timeout=180, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert "Tandem-Vorschläge für den Jahrgang 2024" in result.stdout
    for member in (m for m in load_network() if m.join_year == 2024):
        assert member.registration.name in result.stdout, member.registration.name
    for year in (2020, 2021, 2022):
        assert f"{year}: " in result.stderr and "Tandems angenommen" in result.stderr
    assert "geschätzt" in result.stdout and "offen" in result.stdout
    assert "Kollegiale Beratung für" in result.stdout


@pytest.mark.slow
def test_demo_shows_an_earlier_cohort_decided_by_hand() -> None:
    cohort = [m for m in load_network() if m.join_year == 2020]
    result = subprocess.run(
        [*tandem_command(), "demo", "--cohort", "2020", "--interactive"],
        input="a\n" * len(cohort), capture_output=True, text=True, timeout=180, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Tandem-Vorschläge für den Jahrgang 2020" in result.stdout
    assert result.stdout.count("angenommen") >= len(cohort)
    assert "2021: " not in result.stderr, "later cohorts are not replayed"


def test_demo_refuses_an_unknown_cohort() -> None:
    result = subprocess.run(
        [*tandem_command(), "demo", "--cohort", "1999"], capture_output=True, text=True,
        timeout=60, env=ENV,
    )  # fmt: skip
    assert result.returncode == 2
    assert "kein Jahrgang 1999" in result.stderr
