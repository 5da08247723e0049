"""The registry's service layer without a broker: admission, changes, departures, the
``member.admitted`` consumer's dedup and dead letters, and republication, each observed as
the stored rows and the records the outbox hands to its sink."""

from __future__ import annotations

import uuid

import pytest

from schemas.events import Topics
from schemas.member import MemberRegistration, MemberUpdate
from services.registry import store
from services.registry.admission import AdmissionRefused
from tests.helpers import member_body
from tests.service.conftest import RegistryApp

ADMITTED_DLQ = Topics.dlq(Topics.MEMBER_ADMITTED)


def registration(member_id: str, **changes: object) -> MemberRegistration:
    return MemberRegistration.model_validate(member_body(member_id, "2024-03-01", **changes))


async def member_count(registry: RegistryApp) -> int:
    return (await store.list_members(registry.service.engine, limit=1, offset=0))[1]


# --- admit, change, leave ------------------------------------------------------------------


async def test_admit_stores_the_member_and_announces_it_without_personal_data(
    registry: RegistryApp,
) -> None:
    admitted = await registry.service.admit(registration("goeppingen"), "staff: Erika")
    assert admitted is not None and admitted.row["id"] == "goeppingen"
    assert admitted.looked_up == ()  # population and coordinates were given
    stored = await store.get_member(registry.service.engine, "goeppingen")
    assert stored is not None and stored["contact"]["name"] == "Maria Muster"

    [joined] = (await registry.published()).on(Topics.CITY_JOINED)
    assert joined["key"] == "goeppingen"  # key = city id
    assert joined["value"]["data"]["id"] == "goeppingen"
    assert joined["value"]["data"]["partners"] == [
        {"sector": "civil_society"}, {"sector": "administration"}, {"sector": "business"},
    ]  # fmt: skip
    text = registry.sink.sent[0].payload
    assert "Maria Muster" not in text and "maria.muster@" not in text and "Rathaus" not in text
    history = await store.history(registry.service.engine, "goeppingen")
    assert history is not None and [h["actor"] for h in history] == ["staff: Erika"]


async def test_admit_refuses_every_broken_rule_and_a_second_registration(
    registry: RegistryApp,
) -> None:
    small = registration("kleinstadt", population=500, partners=[])
    with pytest.raises(AdmissionRefused) as refused:
        await registry.service.admit(small, "staff: Erika")
    assert {p.field for p in refused.value.problems} == {"population", "partners"}

    await registry.service.admit(registration("goeppingen"), "staff: Erika")
    with pytest.raises(store.DuplicateMember):
        await registry.service.admit(registration("goeppingen"), "staff: Erika")
    assert await member_count(registry) == 1
    assert len((await registry.published()).on(Topics.CITY_JOINED)) == 1


async def test_admit_guard_false_stores_nothing(registry: RegistryApp) -> None:
    async def refuse(_connection: object) -> bool:
        return False

    assert await registry.service.admit(registration("goeppingen"), "x", guard=refuse) is None
    assert await member_count(registry) == 0
    assert (await registry.published()).sent == []


async def test_change_announces_the_changed_fields_and_checks_the_rules(
    registry: RegistryApp,
) -> None:
    await registry.service.admit(registration("ammerbuch"), "staff: Erika")
    row, changed = await registry.service.change(
        "ammerbuch", MemberUpdate(mentor_capacity=2), "staff: Erika"
    )
    assert changed == ["mentor_capacity"] and row["mentor_capacity"] == 2
    [updated] = (await registry.published()).on(Topics.CITY_UPDATED)
    assert updated["key"] == "ammerbuch"
    assert updated["value"]["data"]["mentor_capacity"] == 2

    _, unchanged = await registry.service.change(
        "ammerbuch", MemberUpdate(mentor_capacity=2), "staff: Erika"
    )
    assert unchanged == []
    with pytest.raises(store.InvalidChange) as invalid:
        await registry.service.change("ammerbuch", MemberUpdate(population=500), "staff: Erika")
    assert [e["loc"] for e in invalid.value.errors] == [["body", "population"]]
    with pytest.raises(store.MemberNotFound):
        await registry.service.change("nowhere", MemberUpdate(mentor_capacity=1), "staff")
    assert len((await registry.published()).on(Topics.CITY_UPDATED)) == 1  # nothing more


async def test_leave_announces_the_departure_and_freezes_the_member(
    registry: RegistryApp,
) -> None:
    await registry.service.admit(registration("goch"), "staff: Erika")
    row = await registry.service.leave("goch", "Förderung endet", "staff: Erika")
    assert row["status"] == "left"
    [left] = (await registry.published()).on(Topics.CITY_LEFT)
    assert left["key"] == "goch"
    assert left["value"]["data"] == {"id": "goch", "reason": "Förderung endet"}
    with pytest.raises(store.MemberLeft):
        await registry.service.change("goch", MemberUpdate(mentor_capacity=2), "staff: Erika")
    with pytest.raises(store.MemberNotFound):
        await registry.service.leave("nowhere", "x", "staff: Erika")


async def test_republish_announces_every_member_again_with_new_envelope_ids(
    registry: RegistryApp,
) -> None:
    for member_id in ("ammerbuch", "goch"):
        await registry.service.admit(registration(member_id), "staff: Erika")
    first = (await registry.published()).on(Topics.CITY_JOINED)
    assert await store.republish(registry.service.engine) == 2
    joined = (await registry.published()).on(Topics.CITY_JOINED)
    assert [j["key"] for j in joined] == ["ammerbuch", "goch", "ammerbuch", "goch"]
    assert [j["value"]["data"] for j in joined[2:]] == [j["value"]["data"] for j in first]
    assert len({j["value"]["id"] for j in joined}) == 4


# --- member.admitted: dedup and dead letters -----------------------------------------------


async def test_member_admitted_registers_once_however_often_it_is_delivered(
    registry: RegistryApp,
) -> None:
    event_id = str(uuid.uuid4())
    body = member_body("goeppingen", "2024-03-01", seeks_tandem=True)
    await registry.service.ingest_admitted([registry.admitted(body, event_id=event_id)])
    await registry.service.ingest_admitted(
        [registry.admitted(body, event_id=event_id), registry.admitted(body, event_id=event_id)]
    )
    assert await member_count(registry) == 1
    history = await store.history(registry.service.engine, "goeppingen")
    assert history is not None and [h["actor"] for h in history] == ["platform (member.admitted)"]
    sink = await registry.published()
    assert [j["key"] for j in sink.on(Topics.CITY_JOINED)] == ["goeppingen"]
    assert sink.on(ADMITTED_DLQ) == []


async def test_member_admitted_dead_letters_what_it_cannot_register(
    registry: RegistryApp,
) -> None:
    await registry.service.admit(registration("goch"), "staff: Erika")
    reused = str(uuid.uuid4())
    await registry.service.ingest_admitted(
        [
            registry.admitted(member_body("kleinstadt", "2024-01-01", population=500)),
            registry.admitted(b"\xff\x00 not json", key="x"),
            registry.admitted(member_body("goch", "2024-01-01")),  # exists already
            registry.admitted(member_body("wrong-key", "2024-01-01"), key="other"),
            registry.admitted(member_body("ammerbuch", "2015-01-01"), event_id=reused),
            registry.admitted(member_body("ammerbuch", "2015-01-01", name="X"), event_id=reused),
        ]
    )
    dead = (await registry.published()).on(ADMITTED_DLQ)
    errors = {d["key"]: d["value"]["error"] for d in dead}
    assert set(errors) == {"kleinstadt", "x", "goch", "other", "ammerbuch"}
    assert errors["kleinstadt"].startswith("admission refused: population")
    assert errors["goch"] == "admission refused: member goch exists already"
    assert "not the city id 'wrong-key'" in errors["other"]
    assert "was used before for other data" in errors["ammerbuch"]
    assert all(d["value"]["consumer"] == "registry" for d in dead)
    binary = next(d["value"] for d in dead if d["key"] == "x")
    assert binary["original_encoding"] == "base64"
    # Personal data never travels on a dead letter either.
    assert all("Maria Muster" not in r.payload for r in registry.sink.sent)
    # The valid ones (goch via the API, ammerbuch's first delivery) are the only members.
    assert await member_count(registry) == 2


async def test_a_record_delivered_again_is_dead_lettered_once(registry: RegistryApp) -> None:
    poison = registry.admitted(b"not json", key="x")
    await registry.service.ingest_admitted([poison])
    await registry.service.ingest_admitted([poison])  # same partition and offset: redelivery
    assert len((await registry.published()).on(ADMITTED_DLQ)) == 1
