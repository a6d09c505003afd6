"""The studio in a real browser (Debian Chromium, headless): type a scene request, see cards with images, make one
card's 3D model, preview it and check the 3D canvas really draws, reload and see the scene again. Every non-local
host is unresolvable in the browser, and the test asserts the page asked for nothing outside the app.

Screenshots go to $CHAT3D_TEST_ARTIFACTS/browser (default: pytest's temp dir) for CI to keep.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.studio import chromium
from tests.studio.chromium import requested_urls, wait_for
from tests.studio.live import Stack

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if not chromium.available():
    pytest.skip("Debian chromium and chromium-driver are not installed", allow_module_level=True)
pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("CHAT3D_TEST_ARTIFACTS")
    path = Path(root) / "browser" if root else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cards(driver: Any) -> list[Any]:
    return [c for c in driver.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]


def card_button(card: Any, label: str) -> Any:
    return next(b for b in card.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == label)


def cards_with_images(driver: Any) -> list[Any]:
    shown = cards(driver)
    with_images = [c for c in shown if c.find_elements(By.CSS_SELECTOR, "img")]
    return shown if shown and len(with_images) == len(shown) else []


def distinct_colours(png: bytes) -> int:
    """Colours (quantised) in the middle of a screenshot, away from the viewer's label and buttons."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = image.size
    centre = image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((64, 64))
    return len({(r // 16, g // 16, b // 16) for r, g, b in centre.getdata()})


def colourful_disc(path: Path) -> Path:
    """An object photo stand-in: a gradient disc on a transparent background (the 3D step uses the alpha)."""
    size = 256
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    pixels = image.load()
    for y in range(size):
        for x in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size * 0.42) ** 2:
                pixels[x, y] = (x, 255 - y, 255 - x, 255)
    image.save(path)
    return path


def test_scene_in_a_real_browser(browser: Any, live: Stack, artifacts: Path) -> None:
    browser.get(live.app)
    header = wait_for(lambda: browser.find_element(By.ID, "status-header"), "the status header")
    wait_for(lambda: "LLM ready" in header.text and "3D ready" in header.text, "both services ready")

    box = browser.find_element(By.CSS_SELECTOR, "textarea[placeholder^='Describe a scene or ask']")
    box.send_keys("Create a cozy reading corner")
    box.send_keys(Keys.ENTER)
    shown = wait_for(lambda: cards_with_images(browser), "cards with images")
    browser.save_screenshot(str(artifacts / "1-cards.png"))

    # The tiny profile draws noise; upload a real-looking image so the 3D model is something the canvas shows.
    upload = shown[0].find_element(By.CSS_SELECTOR, "input[type=file]")
    upload.send_keys(str(colourful_disc(artifacts / "upload.png")))
    wait_for(lambda: "uploaded image" in cards(browser)[0].text, "the uploaded image on the card")
    wait_for(lambda: card_button(cards(browser)[0], "Make 3D").is_enabled(), "the Make 3D button")
    card_button(cards(browser)[0], "Make 3D").click()
    wait_for(lambda: "3D ready" in cards(browser)[0].text, "the card's 3D model")
    card_button(cards(browser)[0], "Preview").click()
    canvas = wait_for(
        lambda: [c for c in browser.find_elements(By.CSS_SELECTOR, "canvas") if c.is_displayed()],
        "the 3D preview canvas",
    )[0]
    # Babylon.js (WebGL via SwiftShader) needs a moment to load the GLB and draw; a blank centre has 1 colour.
    colours = wait_for(lambda: (n := distinct_colours(canvas.screenshot_as_png)) >= 8 and n, "the model drawn")
    browser.save_screenshot(str(artifacts / "2-preview.png"))
    (artifacts / "3-canvas.png").write_bytes(canvas.screenshot_as_png)
    assert colours >= 8

    names_before = [c.text.splitlines()[0] for c in cards(browser)]
    browser.refresh()
    wait_for(lambda: len(cards_with_images(browser)) == len(names_before), "the scene after reload")
    assert [c.text.splitlines()[0] for c in cards(browser)] == names_before
    assert "3D ready" in cards(browser)[0].text
    browser.save_screenshot(str(artifacts / "4-reloaded.png"))

    external = {u for u in requested_urls(browser) if not u.startswith((live.app, "data:", "blob:"))}
    assert not external, f"the page asked for outside resources: {sorted(external)[:5]}"
