"""The studio's states as a user sees them in a real browser (Debian Chromium, headless), with the real app on fake
services: badges and one primary action per card, *Cancel 3D* active only while 3D runs, a slow health check shown
as busy (not down), and text-to-image off saying so in the header and on every drawing button."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.studio import chromium
from tests.studio.fake_stack import FakeStack
from tests.studio.fakes import PLAN

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if not chromium.available():
    pytest.skip("Debian chromium and chromium-driver are not installed", allow_module_level=True)
pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

ONE = {**PLAN, "objects": PLAN["objects"][:1]}
NAME = PLAN["objects"][0]["name"]


def header(driver: Any) -> str:
    return str(driver.find_element(By.ID, "status-header").text)


def badge(card: Any) -> str:
    return str(card.find_element(By.CSS_SELECTOR, ".card-state .badge").text)


def primary(card: Any) -> list[str]:
    """The labels of the card's highlighted buttons."""
    buttons = card.find_elements(By.CSS_SELECTOR, "button.primary, button.stop")
    return [b.text.strip() for b in buttons if b.is_displayed()]


def one_card(driver: Any, fake_app: FakeStack, want_badge: str) -> Any:
    """Start over and plan a one-object scene; the card once its badge says `want_badge`."""
    chromium.button(driver, "Start over").click()
    chromium.wait_for(lambda: not chromium.visible_cards(driver), "an empty board")
    fake_app.llm["plans"] = [json.dumps(ONE)]
    chromium.send_chat(driver, "a reading chair")
    return chromium.wait_for(
        lambda: (cards := chromium.visible_cards(driver)) and badge(cards[0]) == want_badge and cards[0],
        f"the card saying {want_badge!r}",
    )


def test_card_states_and_cancel_only_while_3d_runs(browser: Any, fake_app: FakeStack) -> None:
    fake_app.reset()
    fake_app.trellis.update(imagegen_off=False, job_polls=2, health_delay_s=0)
    browser.get(fake_app.app)
    chromium.wait_for(lambda: "LLM ready" in header(browser) and "3D ready" in header(browser), "both services ready")
    assert not chromium.button(browser, "Cancel 3D").is_enabled()  # nothing runs

    card = one_card(browser, fake_app, "image ready")
    assert primary(card) == ["Make 3D"]  # one next step
    assert "1 object · 1 image · 0 models" in browser.find_element(By.ID, "board-title").text  # not "1 objects"

    fake_app.trellis["job_polls"] = 10**6  # the job stays running until told otherwise
    chromium.card_button(card, "Make 3D").click()
    chromium.wait_for(lambda: badge(chromium.visible_cards(browser)[0]) == "making 3D", "the running badge")
    card = chromium.visible_cards(browser)[0]
    assert card.find_elements(By.CSS_SELECTOR, ".progress") and primary(card) == ["Cancel 3D"]
    chromium.wait_for(lambda: chromium.button(browser, "Cancel 3D").is_enabled(), "Cancel 3D enabled while 3D runs")

    fake_app.trellis["job_polls"] = 0
    chromium.wait_for(lambda: badge(chromium.visible_cards(browser)[0]) == "3D ready", "the finished model")
    assert primary(chromium.visible_cards(browser)[0]) == ["Preview"]
    chromium.wait_for(lambda: not chromium.button(browser, "Cancel 3D").is_enabled(), "Cancel 3D idle again")
    assert "1 object · 1 image · 1 model" in browser.find_element(By.ID, "board-title").text


def test_a_slow_health_check_shows_busy_not_down(browser: Any, fake_app: FakeStack) -> None:
    fake_app.reset()
    fake_app.trellis.update(imagegen_off=False, health_delay_s=0)
    browser.get(fake_app.app)
    chromium.wait_for(lambda: "3D ready" in header(browser), "the 3D service ready")
    fake_app.trellis["health_delay_s"] = 8  # beyond the studio's 5 s health timeout, as under load
    chromium.wait_for(lambda: "3D busy" in header(browser), "the 3D service shown as busy", timeout_s=40)
    assert "3D down" not in header(browser)
    assert chromium.button(browser, "Draw images").text.strip() != "Draw images (3D service down)"
    fake_app.trellis["health_delay_s"] = 0
    chromium.wait_for(lambda: "3D ready" in header(browser), "the 3D service ready again", timeout_s=40)


def test_text_to_image_off_says_upload_everywhere(browser: Any, fake_app: FakeStack) -> None:
    fake_app.reset()
    fake_app.trellis.update(imagegen_off=True, health_delay_s=0)
    browser.get(fake_app.app)
    chromium.wait_for(
        lambda: "Text-to-image is off: upload an image for each object." in header(browser), "the header note"
    )
    card = one_card(browser, fake_app, "needs an image: upload one")
    assert NAME in card.text and "failed" not in card.text.lower()  # a new card does not start as failed
    assert primary(card) == ["Upload image"]
    chromium.card_button(card, "Edit").click()  # the prompt and variant buttons sit in the card's Edit panel
    chromium.wait_for(lambda: chromium.card_button(card, "Use prompt"), "the open Edit panel")
    labels = {b.text.strip(): b for b in card.find_elements(By.CSS_SELECTOR, "button") if b.is_displayed()}
    for label in ("Draw image", "Use prompt", "Draw variants"):
        found = labels.get(f"{label} (text-to-image off)")
        assert found is not None and not found.is_enabled(), (label, sorted(labels))
    assert not chromium.button(browser, "Draw images").is_enabled()
    fake_app.trellis["imagegen_off"] = False
