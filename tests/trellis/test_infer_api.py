"""`POST /v1/infer` over real HTTP (tiny profile: relief + tiny SANA + tiny classifiers)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import trimesh

from tests.trellis.conftest import disc_image, encode, running
from tests.trellis.test_images import _png_header_only


def infer(url: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/infer", json=body, timeout=60, **kw)


def artifact(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    (art,) = resp.json()["artifacts"]
    return art


def load_glb(b64: str) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(base64.b64decode(b64)), file_type="glb", force="mesh")


def test_infer_image_only_returns_textured_closed_glb(tiny_url: str, png_uri: str) -> None:
    art = artifact(infer(tiny_url, {"image": png_uri}))  # exactly what NVIDIA's blueprint sends
    assert art["finishReason"] == "SUCCESS" and art["backend"] == "relief" and art["output_format"] == "glb"
    assert art["seed"] > 0
    mesh = load_glb(art["base64"])
    assert len(mesh.faces) > 0 and mesh.is_watertight
    assert mesh.visual.material.baseColorTexture is not None


def test_infer_plain_base64_jpeg_without_alpha(tiny_url: str) -> None:
    art = artifact(infer(tiny_url, {"image": encode(disc_image(128, alpha=False), "JPEG", data_uri=False)}))
    assert art["finishReason"] == "SUCCESS" and load_glb(art["base64"]).is_watertight


def test_infer_text_mode_through_tiny_sana(tiny_url: str) -> None:
    art = artifact(infer(tiny_url, {"prompt": "a small wooden chair", "seed": 7}))
    assert art["finishReason"] == "SUCCESS" and art["seed"] == 7 and art["backend"] == "relief"
    assert len(load_glb(art["base64"]).faces) > 0


def test_infer_seed_reproducible_in_text_mode(tiny_url: str) -> None:
    first = artifact(infer(tiny_url, {"prompt": "a lamp", "seed": 1234}))
    again = artifact(infer(tiny_url, {"prompt": "a lamp", "seed": 1234}))
    other = artifact(infer(tiny_url, {"prompt": "a lamp", "seed": 4321}))
    assert first["base64"] == again["base64"]
    assert first["base64"] != other["base64"]


def test_infer_seed_zero_picks_and_reports_seed(tiny_url: str, png_uri: str) -> None:
    seeds = {artifact(infer(tiny_url, {"image": png_uri, "seed": 0}))["seed"] for _ in range(2)}
    assert all(s > 0 for s in seeds) and len(seeds) == 2


def test_infer_stl_output(tiny_url: str, png_uri: str) -> None:
    art = artifact(infer(tiny_url, {"image": png_uri, "output_format": "stl"}))
    assert art["output_format"] == "stl"
    mesh = trimesh.load(io.BytesIO(base64.b64decode(art["base64"])), file_type="stl")
    assert mesh.is_watertight and mesh.volume > 0


def test_infer_no_texture_gives_vertex_colours(tiny_url: str, png_uri: str) -> None:
    mesh = load_glb(artifact(infer(tiny_url, {"image": png_uri, "no_texture": True}))["base64"])
    assert mesh.visual.kind == "vertex"


def test_infer_accepts_all_nim_parameters(tiny_url: str, png_uri: str) -> None:
    body = {
        "mode": "image",
        "image": png_uri,
        "seed": 42,
        "ss_sampling_steps": 50,
        "slat_sampling_steps": 10,
        "ss_cfg_scale": 10,
        "slat_cfg_scale": 0,
        "no_texture": False,
        "output_format": "glb",
        "samples": 1,
        "unknown_field": "ignored",
    }
    assert artifact(infer(tiny_url, body))["seed"] == 42


BAD_INPUTS = {
    "not_base64": ({"image": "%%% not base64 %%%"}, "image", "base64"),
    "not_an_image": ({"image": base64.b64encode(b"hello world, not an image").decode()}, "image", "PNG"),
    "too_many_pixels": ({"image": base64.b64encode(_png_header_only(5000, 5000)).decode()}, "image", "pixels"),
    "prompt_and_image": ({"image": "iVBORw0KGgo=", "prompt": "a cup"}, "prompt", "not both"),
    "neither": ({"seed": 3}, "image", "`prompt`"),
    "prompt_too_long": ({"prompt": "x" * 1001}, "prompt", "1000"),
    "image_too_small": ({"image": encode(disc_image(1))}, "image", "image is 1×1 px; 3D needs at least 64×64"),
    "image_too_narrow": ({"image": encode(disc_image(256).resize((256, 63)))}, "image", "MIN_IMAGE_SIDE"),
    "ss_steps_low": ({"prompt": "a cup", "ss_sampling_steps": 9}, "ss_sampling_steps", "10"),
    "slat_steps_high": ({"prompt": "a cup", "slat_sampling_steps": 51}, "slat_sampling_steps", "50"),
    "cfg_negative": ({"prompt": "a cup", "ss_cfg_scale": -0.5}, "ss_cfg_scale", "0"),
    "cfg_high": ({"prompt": "a cup", "slat_cfg_scale": 10.5}, "slat_cfg_scale", "10"),
    "seed_negative": ({"prompt": "a cup", "seed": -1}, "seed", "0"),
    "seed_huge": ({"prompt": "a cup", "seed": 2**32}, "seed", "4294967295"),
    "unknown_format": ({"prompt": "a cup", "output_format": "obj"}, "output_format", "glb"),
    "two_samples": ({"prompt": "a cup", "samples": 2}, "samples", "samples=1"),
    "mode_mismatch": ({"mode": "text", "image": "iVBORw0KGgo="}, "mode", "prompt"),
    "not_json": (None, None, "JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_infer_rejects_bad_input(case: str, tiny_url: str, png_uri: str) -> None:
    body, param, hint = BAD_INPUTS[case]
    if body is None:
        resp = httpx.post(
            f"{tiny_url}/v1/infer", content=b"{not json", timeout=30, headers={"content-type": "application/json"}
        )
    else:
        resp = infer(tiny_url, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert hint in err["message"], err["message"]
    # the service keeps working after each bad request
    assert artifact(infer(tiny_url, {"image": png_uri, "no_texture": True}))["finishReason"] == "SUCCESS"


def test_unknown_route_uses_error_envelope(tiny_url: str) -> None:
    resp = httpx.get(f"{tiny_url}/v1/nothing-here")
    assert resp.status_code == 404 and "message" in resp.json()["error"]


def test_infer_requires_api_key_when_set(make_settings, png_uri: str) -> None:
    with running(make_settings(api_key="s3cret-key", imagegen_model="")) as url:
        assert infer(url, {"image": png_uri}).status_code == 401
        wrong = infer(url, {"image": png_uri}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        ok = infer(url, {"image": png_uri}, headers={"Authorization": "Bearer s3cret-key"})
        assert artifact(ok)["finishReason"] == "SUCCESS"
        assert httpx.get(f"{url}/v1/health/ready").status_code == 200  # probes need no key


def test_infer_refuses_oversized_body_before_parsing(make_settings) -> None:
    with running(make_settings(imagegen_model="", max_image_bytes=1024)) as url:
        resp = httpx.post(
            f"{url}/v1/infer",
            content=b"{" + b" " * 100_000 + b"}",
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 413 and "MAX_IMAGE_BYTES" in resp.json()["error"]["message"]
