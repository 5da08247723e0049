"""``tandem demo``: the main job, exactly as the README runs it."""

from __future__ import annotations

import subprocess

import pytest

from services.demo.network import load_network, split_cohort
from tests.e2e.conftest import tandem_command


@pytest.mark.slow
def test_demo_prints_a_proposal_for_every_newcomer_of_2024() -> None:
    result = subprocess.run(
        [*tandem_command(), "demo"], capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Tandem-Vorschläge für den Jahrgang 2024" in result.stdout
    _, newcomers = split_cohort(load_network(), 2024)
    for member in newcomers:
        assert member.registration.name in result.stdout, member.registration.name
    assert "geschätzt" in result.stdout
    assert "Score" in result.stdout
