"""Headless Debian Chromium driven through Selenium, for the browser tests and `bench/screenshots.py`: every
non-local host is unresolvable, so a page that asks for anything outside the app shows it in its request log."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--hide-scrollbars",
]
TIMEOUT_S = 90.0


def available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1800) -> Iterator[Any]:
    """A Chrome WebDriver with its performance (network) and console logs on; quit when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--window-size={width},{height}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Size the window so that the page itself gets `width` x `height` CSS pixels (the window's own bars take
    some of a window's size; an emulated viewport instead would leave WebGL canvases out of screenshots)."""
    bars = driver.execute_script(
        "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(width + bars[0], height + bars[1])


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:  # an element re-rendered between find and read: look again
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def requested_urls(driver: Any) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def visible_cards(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return [c for c in driver.find_elements(By.CSS_SELECTOR, "#board > .card") if c.is_displayed()]


def card_button(card: Any, label: str) -> Any:
    """The card's button whose label starts with `label` (a disabled one ends with its reason)."""
    from selenium.webdriver.common.by import By

    return next(b for b in card.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().startswith(label))


def button(driver: Any, label: str) -> Any:
    """The page's visible button whose label starts with `label`."""
    from selenium.webdriver.common.by import By

    found = [b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.is_displayed()]
    return next(b for b in found if b.text.strip().startswith(label))


def send_chat(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, "textarea[placeholder^='Describe a scene or ask']"), "chat box"
    )
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
