"""The streamed plan in a real browser (Debian Chromium, headless), with the real app on fake services that stream
slowly or stall: the first card shows before the plan ends while Send says why it waits, a planning timeout
leaves the scene and its names as they were, an edit that changes nothing says so, and *Ask* answers as chat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.studio import chromium
from tests.studio.fake_stack import FakeStack, fake_stack
from tests.studio.fakes import NO_EDIT, PLAN, edit

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if not chromium.available():
    pytest.skip("Debian chromium and chromium-driver are not installed", allow_module_level=True)
pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

THREE = {**PLAN, "objects": [*PLAN["objects"], {**PLAN["objects"][1], "name": "Side table", "prompt": "a side table"}]}
NAMES = ["Armchair", "Floor lamp"]


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeStack]:
    """The app with a short UI_HTTP_TIMEOUT_S: the planning timeout is what its test is about."""
    with fake_stack(tmp_path_factory.mktemp("browser-timeout"), UI_HTTP_TIMEOUT_S="2") as s:
        yield s


def page_text(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def card_names(driver: Any, names: list[str]) -> list[str]:
    """Which of `names` the visible cards show, in card order (one name a card)."""
    shown = [c.text for c in chromium.visible_cards(driver)]
    return [next((n for n in names if n in text), "?") for text in shown]


def open_page(driver: Any, fake_app: FakeStack) -> None:
    driver.get(fake_app.app)
    chromium.wait_for(lambda: "LLM ready" in page_text(driver), "the LLM ready in the header")


def plan_first_scene(driver: Any, fake_app: FakeStack) -> None:
    """Plan the two-object scene."""
    fake_app.reset(plans=[json.dumps(PLAN)])
    chromium.send_chat(driver, "a cozy reading corner")
    chromium.wait_for(lambda: card_names(driver, NAMES) == NAMES, "the planned cards")
    chromium.wait_for(lambda: chromium.button(driver, "Send").is_enabled(), "Send enabled again")


def test_the_first_card_shows_before_the_plan_ends(browser: Any, fake_app: FakeStack, tmp_path: Path) -> None:
    open_page(browser, fake_app)
    fake_app.reset(plans=[json.dumps(THREE)], chunk_chars=6, chunk_delay_s=0.15)  # ~6 s for the whole plan
    chromium.send_chat(browser, "a cozy reading corner")
    chromium.wait_for(lambda: chromium.visible_cards(browser), "the first streamed card", timeout_s=30)
    text = page_text(browser)
    assert "Planning… " in text and "Here is a plan" not in text  # the plan is still running
    assert len(chromium.visible_cards(browser)) < 3
    send = chromium.button(browser, "Send")
    assert not send.is_enabled() and "planning" in send.text
    browser.save_screenshot(str(tmp_path / "streaming.png"))
    chromium.wait_for(lambda: "Here is a plan" in page_text(browser), "the saved plan", timeout_s=30)
    assert card_names(browser, ["Armchair", "Floor lamp", "Side table"]) == ["Armchair", "Floor lamp", "Side table"]
    chromium.wait_for(lambda: chromium.button(browser, "Send").is_enabled(), "Send enabled after the plan")


def test_a_planning_timeout_leaves_the_scene_and_its_names(browser: Any, impatient: FakeStack) -> None:
    open_page(browser, impatient)
    plan_first_scene(browser, impatient)
    (scene_dir,) = (impatient.data_dir / "scenes").glob("*/scene.json")
    before = json.loads(scene_dir.read_text())["objects"]
    lamp = {**PLAN["objects"][1], "name": "Desk lamp", "prompt": "a desk lamp"}
    rug = {**lamp, "name": "Rug", "prompt": "a rug"}
    impatient.reset(plans=[edit(add=[lamp, rug])], chunk_chars=10, stall_at=14, stall_s=6)  # stalls after a card
    chromium.send_chat(browser, "add a desk lamp and a rug")
    chromium.wait_for(lambda: "did not answer in time" in page_text(browser), "the timeout message", timeout_s=30)
    chromium.wait_for(lambda: card_names(browser, NAMES) == NAMES, "the cards as they were")
    assert "Desk lamp" not in " ".join(c.text for c in chromium.visible_cards(browser))
    assert json.loads(scene_dir.read_text())["objects"] == before
    chromium.wait_for(lambda: chromium.button(browser, "Send").is_enabled(), "Send enabled after the timeout")


def test_an_edit_that_changes_nothing_says_so(browser: Any, fake_app: FakeStack) -> None:
    open_page(browser, fake_app)
    plan_first_scene(browser, fake_app)
    fake_app.reset(plans=[json.dumps(NO_EDIT)])
    chromium.send_chat(browser, "add an armchair, a floor lamp and a small side table")
    chromium.wait_for(lambda: "Nothing changed: " in page_text(browser), "the nothing-changed reply")
    assert card_names(browser, NAMES) == NAMES


def test_ask_mode_answers_as_chat(browser: Any, fake_app: FakeStack) -> None:
    open_page(browser, fake_app)
    fake_app.reset()
    mode = browser.find_element(By.ID, "chat-mode")
    next(label for label in mode.find_elements(By.TAG_NAME, "label") if label.text.strip() == "Ask").click()
    chromium.send_chat(browser, "a cozy reading corner")
    chromium.wait_for(lambda: "Hello there!" in page_text(browser), "the chat answer")
    assert fake_app.plan_calls() == [] and chromium.visible_cards(browser) == []
