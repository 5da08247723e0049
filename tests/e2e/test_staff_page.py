"""The staff page in a real browser (Debian's Chromium via Playwright) against a running node."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.infra.embedded_broker import EmbeddedBroker
from services.runtime import Node
from tests.conftest import (
    COORDINATOR,
    PLATFORM,
    STAFF,
    eventually,
    member_body,
    node_settings,
    read_topic,
)

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NETWORK = [
    member_body("ammerbuch", "2015-01-01", population=11_000, lat=48.55, lon=8.98),
    member_body("rheinfelden-baden", "2016-01-01", population=34_000, lat=47.56, lon=7.78),
    member_body("lemgo", "2016-01-01", population=42_000, state="DE-NW", lat=52.03, lon=8.9),
    member_body("speyer", "2017-01-01", population=50_000, state="DE-RP", lat=49.32, lon=8.43),
    member_body("goeppingen", "2024-03-01", population=58_000, seeks_tandem=True,
                estimated=["population"]),
    member_body("goch", "2024-03-01", population=34_000, state="DE-NW", lat=51.68, lon=6.16,
                seeks_tandem=True),
]  # fmt: skip


@pytest.fixture
async def sqlite_node(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Node]:
    """A node on SQLite only: the browser test is about the page, not the database."""
    node = Node(node_settings(broker.bootstrap, tmp_path, None))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def pending(url: str) -> dict[str, dict[str, object]]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {STAFF}"}) as c:
        items = (await c.get("/api/proposals", params={"status": "pending"})).json()["items"]
    return {str(p["newcomer_id"]): p for p in items}


async def test_login_is_refused_without_a_staff_token(sqlite_node: Node) -> None:
    async with httpx.AsyncClient(base_url=sqlite_node.url) as client:
        page = await client.get("/")
        assert "Staff-Token" in page.text and "Offene Vorschläge" not in page.text
        wrong = await client.post("/ui/login", data={"token": "nope-nope-nope"})
        assert wrong.status_code == 401 and "Unbekanntes Token" in wrong.text
        coordinator = await client.post("/ui/login", data={"token": COORDINATOR})
        assert coordinator.status_code == 403 and "Rolle staff" in coordinator.text
        assert (await client.get("/ui/fragments/main")).status_code == 401
        assert (await client.post("/ui/proposals/x/accept")).status_code == 401
        login = await client.post("/ui/login", data={"token": STAFF})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.slow
async def test_staff_review_proposals_in_the_browser(sqlite_node: Node) -> None:
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    from playwright.async_api import async_playwright, expect

    url = sqlite_node.url
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {PLATFORM}"}
    ) as platform:
        for body in NETWORK:
            assert (await platform.post("/api/members", json=body)).status_code == 201

    async def both() -> dict[str, dict[str, object]] | None:
        found = await pending(url)
        return found if {"goeppingen", "goch"} <= set(found) else None

    first = await eventually(both, "two proposals")
    assert sqlite_node.settings.broker is not None

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(url + "/")
            await expect(page.get_by_label("Staff-Token")).to_be_visible()
            await expect(page.get_by_text("Offene Vorschläge")).to_have_count(0)
            await page.get_by_label("Staff-Token").fill(STAFF)
            await page.get_by_role("button", name="Anmelden").click()
            await expect(page.get_by_role("heading", name="Offene Vorschläge")).to_be_visible()
            await page.evaluate("window.__noReload = true")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "staff-page.png"), full_page=True)

            # A pending proposal with its reasons; accept it.
            accepted_id = str(first["goeppingen"]["proposal_id"])
            card = page.locator(f'article[data-proposal="{accepted_id}"]')
            await expect(card).to_be_visible()
            reasons = first["goeppingen"]["reasons"]
            assert isinstance(reasons, list)
            await expect(card.locator(".reasons")).to_contain_text(str(reasons[0]))
            # Why not the others: one sentence under each alternative, as the API says.
            alternatives = first["goeppingen"]["alternatives"]
            assert isinstance(alternatives, list) and alternatives
            for alternative in alternatives:
                item = card.locator(f'.alternative[data-mentor="{alternative["mentor_id"]}"]')
                await expect(item.locator(".why-not")).to_contain_text(alternative["why_not"])
                if alternative["taken_by"]:
                    await expect(item.locator(".taken-by")).to_be_visible()
            # The estimated population is marked on the newcomer's card.
            await expect(card.locator(".member.newcomer .est")).to_have_text("geschätzt")
            await card.get_by_role("button", name="Annehmen").click()
            await expect(card).to_have_count(0)
            await expect(
                page.locator(f'table.tandems tr[data-proposal="{accepted_id}"]')
            ).to_be_visible()
            decided = await read_topic(
                sqlite_node.settings.broker, "tandem.decided", lambda r: len(r) >= 1
            )
            assert decided[0]["value"]["data"] == {
                **decided[0]["value"]["data"], "proposal_id": accepted_id, "decision": "accepted"
            }  # fmt: skip

            # Reject another with a reason: the replacement appears without a reload.
            rejected_id = str(first["goch"]["proposal_id"])
            card = page.locator(f'article[data-proposal="{rejected_id}"]')
            await card.get_by_placeholder("Grund der Ablehnung").fill("zu weit weg")
            await card.get_by_role("button", name="Ablehnen").click()
            await expect(card).to_have_count(0)
            replacement = page.locator('article[data-newcomer="goch"]')
            await expect(replacement).to_be_visible(timeout=20_000)
            assert await replacement.get_attribute("data-proposal") != rejected_id
            assert await page.evaluate("window.__noReload") is True

            # Take an alternative in one step; the status says it was saved.
            await expect(replacement.locator(".alternative .why-not").first).to_be_visible()
            await replacement.locator(".alternatives button").first.click()
            await expect(page.locator('article[data-newcomer="goch"]')).to_have_count(0)
            await expect(page.locator("table.tandems tr")).to_have_count(2)
            await expect(page.locator("#status")).to_contain_text("Gespeichert.")

            # Collegial advice from the page: a member registered after the page loaded is
            # offered; a mistake is reported next to the form, not at the top.
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {PLATFORM}"}
            ) as platform:
                late = member_body("kehl", "2018-01-01", population=37_000, lat=48.57, lon=7.81)
                assert (await platform.post("/api/members", json=late)).status_code == 201
            select = page.get_by_label("Anfragendes Mitglied")

            async def offered() -> bool | None:
                await select.focus()
                await page.wait_for_timeout(200)
                return await page.locator('#advice-city option[value="kehl"]').count() == 1 or None

            await eventually(offered, "the late member in the advice form")
            await select.select_option("kehl")
            await page.get_by_role("button", name="Passende Mitglieder finden").click()
            await expect(page.locator("#advice-status")).to_contain_text("mindestens ein Thema")
            box = await page.locator("#advice-form textarea").bounding_box()
            cards = await page.locator("main > section.card").first.bounding_box()
            advice = await page.locator("section.advice").bounding_box()
            assert box and cards and advice
            assert abs(advice["x"] - cards["x"]) < 2 and abs(advice["width"] - cards["width"]) < 2
            assert box["height"] >= 80, "the question box is big enough for its placeholder"
            await select.select_option("goeppingen")
            await page.get_by_label("Digitalisierung").check()
            await page.get_by_role("button", name="Passende Mitglieder finden").click()
            await expect(page.locator(".advice-answer li strong").first).to_be_visible()
            await expect(page.locator("#advice-status")).to_have_text("")

            # Two alike newcomers: taking the alternative another proposal uses changes that
            # proposal too; the page says which one, and the new proposal says why.
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {PLATFORM}"}
            ) as platform:
                for twin in ("bruchsal", "bretten"):
                    body = member_body(twin, "2024-05-01", population=40_000, lat=49.1,
                                       lon=8.6, seeks_tandem=True)  # fmt: skip
                    assert (await platform.post("/api/members", json=body)).status_code == 201

            async def contested() -> tuple[str, dict[str, object]] | None:
                for newcomer, proposal in (await pending(url)).items():
                    for alternative in proposal["alternatives"]:  # type: ignore[attr-defined]
                        if alternative["taken_by"] and newcomer in ("bruchsal", "bretten"):
                            return newcomer, alternative
                return None

            taker, alternative = await eventually(contested, "an alternative taken by the twin")
            other = str(alternative["taken_by"])
            before = await page.locator(f'article[data-newcomer="{other}"]').get_attribute(
                "data-proposal"
            )
            mentor = alternative["mentor_id"]
            item = page.locator(
                f'article[data-newcomer="{taker}"] .alternative[data-mentor="{mentor}"]'
            )
            await expect(item.locator(".taken-by")).to_contain_text(other.title())
            await item.get_by_role("button").click()
            await expect(page.locator("#status")).to_contain_text(
                f"Dadurch geändert: Vorschlag für {other.title()}", timeout=20_000
            )
            changed = page.locator(f'article[data-newcomer="{other}"]')
            assert await changed.get_attribute("data-proposal") != before
            await expect(changed.locator(".replaced")).to_contain_text(
                f"ist jetzt Tandem-Stadt von {taker.title()}"
            )

            await page.screenshot(path=str(ARTIFACTS / "staff-page-after.png"), full_page=True)
        finally:
            await browser.close()


@pytest.mark.slow
async def test_staff_adopt_weights_learned_from_their_decisions(sqlite_node: Node) -> None:
    """The weights panel: decisions so far, agreement now and with the fitted weights, what
    would change, and adopting them with a reason."""
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    from playwright.async_api import async_playwright, expect

    from services.staff.calibration import percent
    from tests.integration.test_calibration import (
        all_proposed,
        decide_like_staff,
        network,
        register,
    )

    url = sqlite_node.url
    mentors, cohorts = network()
    members = {m["id"]: m for m in mentors + [x for c in cohorts.values() for x in c]}
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {PLATFORM}"}
        ) as platform,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {STAFF}"}) as staff,
        httpx.AsyncClient(base_url=url) as browserless,
    ):
        await register(platform, mentors)
        await browserless.post("/ui/login", data={"token": STAFF})
        empty = await browserless.get("/ui/fragments/calibration")
        assert empty.status_code == 200 and "es fehlen noch 20" in empty.text
        for form in (
            {"reason": " ", "w_geography": "1"},
            {"reason": "x"},
            {"reason": "x", "w_geography": "-1"},
            {"reason": "x", "w_topics": "viel"},
        ):
            refused = await browserless.post("/ui/weights", data=form)
            assert refused.status_code == 422, (form, refused.text)
        for year in (2021, 2022, 2023):
            await register(platform, cohorts[year])
            await decide_like_staff(staff, cohorts[year], members)
        await register(platform, cohorts[2024])
        ids = {m["id"] for m in cohorts[2024]}
        await eventually(lambda: all_proposed(staff, ids), "proposals for the 2024 cohort", 30)
        calibration = (await staff.get("/api/calibration")).json()
        assert calibration["fitted"] is not None and calibration["changes"]

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"],
            )  # fmt: skip
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(url + "/")
                await page.get_by_label("Staff-Token").fill(STAFF)
                await page.get_by_role("button", name="Anmelden").click()
                panel = page.locator("#calibration")
                await expect(
                    panel.get_by_role("heading", name="Gewichte aus Entscheidungen")
                ).to_be_visible()
                await expect(panel.locator(".decisions")).to_have_text("24")
                await expect(panel.locator(".current-top1")).to_have_text(
                    percent(calibration["current"]["top1"])
                )
                await expect(panel.locator(".fitted-top1")).to_have_text(
                    percent(calibration["fitted"]["top1"])
                )
                await expect(panel.locator("ul.changes li")).to_have_count(
                    len(calibration["changes"])
                )
                await panel.scroll_into_view_if_needed()
                ARTIFACTS.mkdir(exist_ok=True)
                await panel.screenshot(path=str(ARTIFACTS / "staff-page-weights.png"))

                # Adopting needs a reason; then the proposals change as the panel said.
                await panel.get_by_label("Grund der Übernahme").fill("Nähe zählt für Besuche")
                await panel.get_by_role("button", name="Geschätzte Gewichte übernehmen").click()
                await expect(panel.locator(".calibration-status")).to_have_text(
                    "Gewichte übernommen."
                )
                await expect(panel.locator(".weights-source")).to_contain_text(
                    "übernommen von Erika Staff"
                )
                record = (await staff.get("/api/weights")).json()
                assert (
                    record["source"] == "adopted" and record["reason"] == "Nähe zählt für Besuche"
                )
                assert record["weights"] == pytest.approx(
                    calibration["fitted"]["weights"], abs=1e-3
                )
                now = await pending(url)
                for change in calibration["changes"]:
                    assert now[change["newcomer_id"]]["mentor_id"] == change["to"]
                    card = page.locator(f'article[data-newcomer="{change["newcomer_id"]}"]')
                    await expect(card).to_have_attribute(
                        "data-proposal", str(now[change["newcomer_id"]]["proposal_id"]),
                        timeout=20_000,
                    )  # fmt: skip
                # Nothing more to change under the weights now in force.
                await expect(panel.locator("ul.changes li")).to_have_count(0)
            finally:
                await browser.close()
