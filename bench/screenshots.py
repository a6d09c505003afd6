"""Screenshots of the studio's main states for the README, taken in headless Chromium at 1280x800:

    python -m bench.screenshots                 # writes docs/screenshots/*.png (from the repository root)
    python -m bench.screenshots --out /tmp/shots

The studio app runs from its real entry point (app.py) against the fake LLM and 3D services the tests use
(tests/studio/fakes.py), so no model is needed: the LLM's plan is fixed, concept images are drawn here, and each 3D
model is the relief backend's model of its image. Each PNG is reduced to a 256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from config import ROOT, Settings
from nim_trellis.backends.base import MeshParams
from nim_trellis.backends.relief import ReliefBackend
from tests.studio import chromium
from tests.studio.fakes import PLAN, fake_llm, fake_trellis
from tests.studio.live import base_env, studio_app
from tests.support import serve_in_thread

OUT = ROOT / "docs" / "screenshots"
WIDTH, HEIGHT = 1280, 800
PREVIEW_SHOT_HEIGHT = 1040
SIDE = 512  # concept image size
Rgb = tuple[int, int, int]


# --- concept images: simple shaded drawings on a transparent background (the 3D step uses the alpha) ------------
def _shaded(size: int, top: Rgb, bottom: Rgb) -> Image.Image:
    """A vertical gradient, light from above."""
    grad = Image.new("RGB", (1, size))
    for y in range(size):
        t = y / (size - 1)
        grad.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return grad.resize((size, size))


def _paint(canvas: Image.Image, draw_mask: Callable[[ImageDraw.ImageDraw], None], top: Rgb, bottom: Rgb) -> None:
    mask = Image.new("L", canvas.size, 0)
    draw_mask(ImageDraw.Draw(mask))
    canvas.paste(_shaded(canvas.size[0], top, bottom), mask=mask.filter(ImageFilter.GaussianBlur(0.8)))


def armchair(c: Image.Image) -> None:
    _paint(c, lambda d: d.rounded_rectangle((130, 70, 382, 330), 60, 255), (72, 140, 112), (38, 92, 72))
    _paint(c, lambda d: d.rounded_rectangle((120, 270, 392, 380), 36, 255), (86, 160, 128), (46, 104, 82))
    for x in (70, 362):
        _paint(c, lambda d, x=x: d.rounded_rectangle((x, 200, x + 80, 400), 40, 255), (80, 150, 120), (40, 96, 76))
    for x in (110, 384):
        _paint(c, lambda d, x=x: d.rectangle((x, 395, x + 18, 450), 255), (120, 80, 50), (80, 50, 30))


def floor_lamp(c: Image.Image) -> None:
    _paint(c, lambda d: d.ellipse((176, 440, 336, 478), 255), (190, 150, 80), (130, 96, 40))
    _paint(c, lambda d: d.rectangle((248, 150, 264, 460), 255), (214, 176, 96), (150, 112, 52))
    _paint(
        c, lambda d: d.polygon([(186, 40), (326, 40), (376, 180), (136, 180)], 255), (250, 236, 200), (222, 196, 140)
    )


def bookshelf(c: Image.Image) -> None:
    _paint(c, lambda d: d.rectangle((116, 36, 396, 476), 255), (176, 128, 82), (128, 86, 50))
    spines = [(196, 74, 60), (52, 96, 150), (224, 170, 60), (70, 130, 90), (150, 70, 120), (60, 60, 70)]
    for row in range(4):
        top = 56 + row * 104
        _paint(c, lambda d, top=top: d.rectangle((134, top, 378, top + 86), 255), (110, 76, 44), (92, 62, 36))
        x = 140
        for i in range(9):
            w = 18 + (row * 7 + i * 5) % 14
            h = 58 + (row * 11 + i * 13) % 26
            colour = spines[(row + i) % len(spines)]
            darker = tuple(round(v * 0.7) for v in colour)
            _paint(
                c,
                lambda d, x=x, w=w, h=h, top=top: d.rectangle((x, top + 86 - h, x + w, top + 86), 255),
                colour,
                darker,
            )  # type: ignore[misc]
            x += w + 4
            if x > 360:
                break


def side_table(c: Image.Image) -> None:
    _paint(c, lambda d: d.ellipse((96, 120, 416, 210), 255), (198, 146, 96), (150, 102, 60))
    _paint(c, lambda d: d.rectangle((238, 180, 274, 420), 255), (168, 118, 72), (118, 80, 46))
    _paint(c, lambda d: d.ellipse((166, 400, 346, 448), 255), (160, 112, 70), (110, 74, 42))


def potted_plant(c: Image.Image) -> None:
    for angle in range(-70, 71, 28):
        a = math.radians(angle)
        cx, cy = 256 + 120 * math.sin(a), 230 - 110 * math.cos(a)

        def leaf(d: ImageDraw.ImageDraw, cx: float = cx, cy: float = cy) -> None:
            d.ellipse((cx - 46, cy - 86, cx + 46, cy + 86), 255)

        _paint(c, leaf, (110, 190, 100), (40, 120, 60))
    _paint(c, lambda d: d.polygon([(166, 310), (346, 310), (318, 470), (194, 470)], 255), (214, 120, 80), (160, 80, 50))


def rug(c: Image.Image) -> None:
    _paint(c, lambda d: d.polygon([(60, 320), (370, 240), (460, 330), (150, 430)], 255), (196, 90, 80), (150, 60, 60))
    _paint(
        c, lambda d: d.polygon([(110, 325), (360, 262), (420, 328), (170, 395)], 255), (236, 210, 170), (206, 176, 136)
    )
    _paint(c, lambda d: d.polygon([(170, 328), (340, 286), (380, 328), (214, 368)], 255), (60, 90, 140), (40, 64, 110))


OBJECTS = [
    ("Armchair", "a deep green velvet armchair with wooden legs", armchair),
    ("Floor lamp", "a brass floor lamp with a cream linen shade", floor_lamp),
    ("Bookshelf", "a tall oak bookshelf full of colourful books", bookshelf),
    ("Side table", "a round walnut side table on a pedestal", side_table),
    ("Potted plant", "a leafy plant in a terracotta pot", potted_plant),
    ("Rug", "a patterned wool rug in red, cream and blue", rug),
]


def concept_image(prompt: str, seed: int) -> bytes:
    draw = next((d for _, p, d in OBJECTS if p == prompt), armchair)
    canvas = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
    draw(canvas)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def plan(names: list[tuple[str, str, Any]], scene_name: str) -> str:
    """A plan in the fake LLM's wire format, one object per name, laid out in a row."""
    template = PLAN["objects"][0]
    objects = [{**template, "name": n, "prompt": p} for n, p, _ in names]
    name_key = next(k for k, v in PLAN.items() if isinstance(v, str))  # the plan's one text field: the scene's name
    return json.dumps({**PLAN, name_key: scene_name, "objects": objects})


class _Stages:
    def stage(self, name: str, progress: float) -> None:
        """The relief backend reports its stages; nobody watches them here."""


def relief_model(body: dict[str, Any]) -> bytes:
    """The relief backend's textured GLB of the job's image."""
    import base64

    data = base64.b64decode(str(body["image"]).split(",", 1)[-1])
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        params = MeshParams(seed=1, ss_steps=12, slat_steps=12, ss_cfg=7.5, slat_cfg=3.0)
        return ReliefBackend(Settings(_env_file=None)).image_to_mesh(image, params, _Stages()).data  # type: ignore[call-arg, arg-type]


# --- the browser session -----------------------------------------------------------------------------------------
def save(driver: Any, path: Path) -> None:
    """A viewport screenshot as a palette PNG (a screenshot of flat UI colours survives 256 colours)."""
    time.sleep(0.8)  # let transitions (progress bar, badges) settle
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def colours(png: bytes) -> int:
    """Colours (quantised) in the middle of a picture: a blank 3D viewer has one or two."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = image.size
    centre = image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((64, 64)).quantize(64)
    return len(centre.getcolors() or [])


def header_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "status-header").text)


def badge_of(card: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(card.find_element(By.CSS_SELECTOR, ".card-state .badge").text)


def scroll_to_top(driver: Any) -> None:
    driver.execute_script("window.scrollTo(0, 0)")


@contextlib.contextmanager
def studio(root: Path) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    llm_state: dict[str, Any] = {"plans": []}
    trellis_state: dict[str, Any] = {"draw": concept_image, "model": relief_model, "job_polls": 2}
    with serve_in_thread(fake_llm(llm_state)) as llm, serve_in_thread(fake_trellis(trellis_state)) as trellis:
        env = base_env(root / "data", root / "cache")
        with studio_app(root / "data", root / "logs", env, llm, trellis) as app:
            yield app, llm_state, trellis_state


def take(out: Path) -> None:
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    wait = chromium.wait_for
    with (
        tempfile.TemporaryDirectory() as tmp,
        studio(Path(tmp)) as (app, llm, trellis),
        chromium.chromium(WIDTH, HEIGHT) as driver,
    ):
        chromium.set_viewport(driver, WIDTH, HEIGHT)
        driver.get(app)
        wait(lambda: "LLM ready" in header_text(driver) and "3D ready" in header_text(driver), "services ready")
        save(driver, out / "1-empty.png")

        llm["plans"] = [plan(OBJECTS, "Reading corner")]
        chromium.send_chat(driver, "Create a cozy reading corner")
        wait(
            lambda: (
                len(cards := chromium.visible_cards(driver)) == len(OBJECTS)
                and all(badge_of(c) == "image ready" for c in cards)
            ),
            "every card with its image",
        )
        scroll_to_top(driver)
        save(driver, out / "2-board.png")

        trellis["job_polls"] = 10**6  # the job stays running, half done, until told otherwise
        first = chromium.visible_cards(driver)[0]
        chromium.card_button(first, "Make 3D").click()
        wait(lambda: chromium.visible_cards(driver)[0].find_elements(By.CSS_SELECTOR, ".progress"), "3D progress")
        scroll_to_top(driver)
        save(driver, out / "3-running-3d.png")

        trellis["job_polls"] = 0
        wait(lambda: badge_of(chromium.visible_cards(driver)[0]) == "3D ready", "the first model")
        chromium.button(driver, "Generate all 3D").click()
        wait(lambda: all(badge_of(c) == "3D ready" for c in chromium.visible_cards(driver)), "every model")
        # Taller, so that finished cards and the large preview fit in one picture.
        chromium.set_viewport(driver, WIDTH, PREVIEW_SHOT_HEIGHT)
        chromium.card_button(chromium.visible_cards(driver)[3], "Preview").click()
        canvas = wait(
            lambda: [c for c in driver.find_elements(By.CSS_SELECTOR, "#preview-panel canvas") if c.is_displayed()],
            "the 3D preview",
            20,
        )[0]
        driver.execute_script("document.getElementById('preview-panel').scrollIntoView({block: 'end'})")
        wait(lambda: colours(canvas.screenshot_as_png) >= 8, "the model drawn")
        save(driver, out / "4-preview.png")
        chromium.set_viewport(driver, WIDTH, HEIGHT)

        trellis["imagegen_off"] = True
        wait(lambda: "Text-to-image is off" in header_text(driver), "the header saying text-to-image is off", 30)
        chromium.button(driver, "Start over").click()
        wait(lambda: not chromium.visible_cards(driver), "an empty board")
        llm["plans"] = [plan(OBJECTS[:4], "Study nook")]
        chromium.send_chat(driver, "Create a quiet study nook")
        wait(
            lambda: (
                len(cards := chromium.visible_cards(driver)) == 4
                and all(badge_of(c) == "needs an image: upload one" for c in cards)
            ),
            "cards asking for an upload",
        )
        scroll_to_top(driver)
        save(driver, out / "5-imagegen-off.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    take(parser.parse_args().out)


if __name__ == "__main__":
    main()
