"""The one great-circle distance (``schemas.geo``) and that nobody writes another one."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.geo import EARTH_RADIUS_KM, great_circle_km, great_circle_km_from
from services.matcher.domain.model import Member
from services.matcher.domain.scoring import distance_km
from services.registry.gazetteer import Place

ROOT = Path(__file__).resolve().parents[2]
BERLIN = (52.52, 13.405)
MUNICH = (48.1351, 11.582)

latitudes = st.floats(-90, 90, allow_nan=False)
longitudes = st.floats(-180, 180, allow_nan=False)


def reference_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The central angle from 3-D unit vectors (atan2 of cross and dot): another formula."""

    def unit(lat: float, lon: float) -> np.ndarray:
        phi, lam = math.radians(lat), math.radians(lon)
        return np.array(
            [math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)]
        )

    a, b = unit(lat1, lon1), unit(lat2, lon2)
    angle = math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b)))
    return EARTH_RADIUS_KM * angle


def test_berlin_to_munich() -> None:
    assert great_circle_km(*BERLIN, *MUNICH) == pytest.approx(504.4, abs=0.5)
    assert great_circle_km(*BERLIN, *BERLIN) == 0.0


@settings(max_examples=300, deadline=None)
@given(latitudes, longitudes, latitudes, longitudes)
def test_scalar_and_vector_forms_agree_with_an_independent_formula(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    km = great_circle_km(lat1, lon1, lat2, lon2)
    assert km == pytest.approx(reference_km(lat1, lon1, lat2, lon2), abs=1e-3)
    assert km == pytest.approx(great_circle_km(lat2, lon2, lat1, lon1), abs=1e-9)
    [vector] = great_circle_km_from(lat1, lon1, np.array([lat2]), np.array([lon2]))
    assert vector == pytest.approx(km, rel=1e-12, abs=1e-9)


def test_vector_form_gives_nan_where_a_coordinate_is_unknown() -> None:
    km = great_circle_km_from(*BERLIN, np.array([MUNICH[0], math.nan]), np.array([MUNICH[1], 1.0]))
    assert km[0] == great_circle_km(*BERLIN, *MUNICH)
    assert math.isnan(km[1])


def test_every_service_measures_with_it() -> None:
    """The matcher's scoring, the registry's gazetteer and (via the view) the staff page."""
    expected = great_circle_km(*BERLIN, *MUNICH)

    def located(id: str, at: tuple[float, float]) -> Member:
        return Member(
            id=id,
            name=id,
            state="DE-BE",
            region="east",
            population=1000,
            lat=at[0],
            lon=at[1],
            joined=dt.date(2020, 1, 1),
            interests=frozenset(),
            strengths=frozenset(),
            mentor_capacity=1,
            seeks_tandem=False,
        )

    assert distance_km(located("b", BERLIN), located("m", MUNICH)) == expected
    place = Place(1, "Berlin", "DE-BE", 3_600_000, *BERLIN)
    assert place.km_to(*MUNICH) == expected


#: Where a great-circle formula may be evaluated: file -> the lines allowed there.
ALLOWED = {
    "schemas/geo.py": re.compile(r".*"),  # the one great-circle distance
    # The tuned engine evaluates the haversine as row . column products for whole score
    # matrices (float32, in place), with EARTH_RADIUS_KM from schemas.geo; test_scoring checks
    # it against score_pair, whose geography uses schemas.geo. Only its in-place arcsin is
    # allowed there (the weighted totals in score_engine, the single criterion in
    # score_features). If the engine moves to another module, move these entries with it.
    "services/matcher/domain/score_engine.py": re.compile(r"\s*np\.arcsin\(out, out=out\)$"),
    "services/matcher/domain/score_features.py": re.compile(r"\s*np\.arcsin\(out, out=out\)$"),
}
#: Inverse trigonometry (haversine, law of cosines, atan2 forms) and the earth's radius.
GREAT_CIRCLE = re.compile(r"\b(?:a(?:rc)?(?:sin|cos)|a(?:rc)?tan2)\(|\b63[5-7]\d(?:\.\d+)?\b")


def test_no_other_great_circle_implementation() -> None:
    offenders = []
    for top in ("services", "schemas", "tools"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative:
                continue
            allowed = ALLOWED.get(relative)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0].rstrip()
                if GREAT_CIRCLE.search(code) and not (allowed and allowed.match(code)):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, (
        "great-circle formulas or an earth radius outside schemas.geo (use great_circle_km / "
        "great_circle_km_from / EARTH_RADIUS_KM from there):\n" + "\n".join(offenders)
    )
