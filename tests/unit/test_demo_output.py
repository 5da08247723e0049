"""``tandem demo``'s table fits an 80-column terminal (issue 16)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from services.demo import run
from services.demo.network import load_network


def test_the_proposal_table_fits_80_columns_one_line_per_newcomer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = load_network()
    by_id = {m.id: m for m in members}
    newcomers = [m for m in members if m.join_year == 2024][:6]
    mentors = [m for m in members if m.join_year is not None and m.join_year < 2020]
    proposals = {
        n.id: {
            "mentor_id": mentors[i].id, "score": 0.74, "status": "pending",
            "reasons": ["bietet Demokratie, Digitalisierung", "140 km entfernt",
                        "Schwachpunkt Größe: Tandem-Stadt etwa 5,2-mal so groß "
                        "(12.000 / 62.000 Einw.)"],
            "alternatives": [{"mentor_id": mentors[i + 1].id, "score": 0.71,
                              "why_not": "0,03 Punkte weniger, vor allem bei Nähe."}],
        }
        for i, n in enumerate(newcomers)
    }  # fmt: skip
    screen = Console(width=80, file=io.StringIO(), record=True)
    monkeypatch.setattr(run, "out", screen)
    run.print_proposals(2024, newcomers, by_id, proposals, {})
    text = screen.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    table = lines[: lines.index("") if "" in lines else len(lines)]
    # Title, borders, header and one line per newcomer (a long name may fold once).
    assert len(table) <= 5 + 2 * len(newcomers)
    for newcomer in newcomers:
        assert newcomer.registration.name in text
    assert "Warum" not in text and "– 0,03 Punkte weniger, vor allem bei Nähe." in text
