"""`POST /v1/images/generations` (OpenAI Images shape) with the tiny SANA pipeline."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.trellis.conftest import GatedBackend, running


def generate(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/images/generations", json=body, timeout=60)


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img


def test_generate_images_returns_pngs_with_seeds(tiny_url: str) -> None:
    resp = generate(tiny_url, {"prompt": "a red cube", "n": 2, "size": "64x96", "seed": 10})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["backend"] == "tiny-sana" and isinstance(body["created"], int)
    assert [d["seed"] for d in body["data"]] == [10, 11]
    assert [png(d["b64_json"]).size for d in body["data"]] == [(64, 96), (64, 96)]


def test_generate_images_default_size_from_settings(tiny_url: str) -> None:
    data = generate(tiny_url, {"prompt": "a cube"}).json()["data"]
    assert len(data) == 1 and png(data[0]["b64_json"]).size == (256, 256) and data[0]["seed"] > 0


def test_generate_images_seed_reproducible_per_image(tiny_url: str) -> None:
    pair = generate(tiny_url, {"prompt": "a teapot", "n": 2, "size": "64x64", "seed": 500}).json()["data"]
    single = generate(tiny_url, {"prompt": "a teapot", "size": "64x64", "seed": 501}).json()["data"][0]
    again = generate(tiny_url, {"prompt": "a teapot", "size": "64x64", "seed": 500}).json()["data"][0]
    assert pair[0]["b64_json"] == again["b64_json"]
    assert pair[0]["b64_json"] != pair[1]["b64_json"]
    diff = sum(
        abs(a - b) for a, b in zip(png(pair[1]["b64_json"]).tobytes(), png(single["b64_json"]).tobytes(), strict=True)
    )
    assert diff / (64 * 64 * 3) < 2.0  # the 2nd image of a batch is redrawn alone from its reported seed


def test_generate_images_custom_steps(tiny_url: str) -> None:
    resp = generate(tiny_url, {"prompt": "a cube", "size": "64x64", "steps": 3, "seed": 1})
    assert resp.status_code == 200 and len(resp.json()["data"]) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "size": "100x100"}, "size"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"n": 1}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),  # the one prompt limit of every endpoint, MAX_PROMPT_CHARS
    ],
)
def test_generate_images_rejects_bad_input(tiny_url: str, body: dict, param: str) -> None:
    resp = generate(tiny_url, body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    if len(body.get("prompt", "")) > 1:
        assert "MAX_PROMPT_CHARS" in resp.json()["error"]["message"]


def test_generate_images_off_gives_503_with_instructions(make_settings) -> None:
    with running(make_settings(imagegen_model="")) as url:
        resp = generate(url, {"prompt": "a cube"})
        assert resp.status_code == 503 and "IMAGEGEN_MODEL" in resp.json()["error"]["message"]
        text3d = httpx.post(f"{url}/v1/infer", json={"prompt": "a cube"})
        assert text3d.status_code == 503 and "IMAGEGEN_MODEL" in text3d.json()["error"]["message"]
        health = httpx.get(f"{url}/v1/health/ready").json()
        assert health["status"] == "ready" and health["backends"]["imagegen"]["state"] == "off"


def test_generate_images_waits_on_the_shared_worker(make_settings, png_uri: str) -> None:
    settings = make_settings()
    backend = GatedBackend(settings)
    with running(settings, backend=backend) as url:
        job_id = httpx.post(f"{url}/v1/jobs", json={"image": png_uri}).json()["id"]
        assert backend.entered.acquire(timeout=10)
        result: dict[str, httpx.Response] = {}
        caller = threading.Thread(target=lambda: result.update(r=generate(url, {"prompt": "x", "size": "64x64"})))
        caller.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/health/ready").json()["queue_depth"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert caller.is_alive()  # queued behind the 3D job, not run beside it
        assert httpx.get(f"{url}/v1/health/ready").json()["queue_depth"] == 1
        backend.gate.set()
        caller.join(timeout=30)
        assert result["r"].status_code == 200
        assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["status"] == "succeeded"
