"""Safety: real classifier decisions filter; broken classifiers follow SAFETY_FAIL_CLOSED; exceptions never filter."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nim_trellis import tiny_models
from nim_trellis.app import create_app
from nim_trellis.service import TrellisService
from tests.support import serve_in_thread, wait_http
from tests.trellis.conftest import running, wait_job, wait_loaded

FINISHED = {"succeeded", "failed", "cancelled", "filtered"}


@pytest.fixture(scope="module")
def unsafe_prompt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_prompt_classifier(tmp_path_factory.mktemp("clf") / "nsfw-prompt", force="unsafe")


@pytest.fixture(scope="module")
def unsafe_image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_image_classifier(tmp_path_factory.mktemp("clf") / "nsfw-image", force="unsafe")


def infer(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/infer", json=body, timeout=60)


def test_prompt_classifier_filters_text_requests(make_settings, unsafe_prompt_model: Path, png_uri: str) -> None:
    with running(make_settings(safety_prompt_model=str(unsafe_prompt_model))) as url:
        art = infer(url, {"prompt": "anything at all", "seed": 3}).json()["artifacts"][0]
        assert art["finishReason"] == "CONTENT_FILTERED" and art["base64"] == "" and art["seed"] == 3

        job = httpx.post(f"{url}/v1/jobs", json={"prompt": "anything"}).json()
        filtered = wait_job(url, job["id"], FINISHED)
        assert filtered["status"] == "filtered" and "unsafe" in filtered["error"]
        assert httpx.get(f"{url}/v1/jobs/{job['id']}/result").status_code == 409

        images = httpx.post(f"{url}/v1/images/generations", json={"prompt": "anything"}, timeout=60)
        assert images.status_code == 400 and images.json()["error"]["code"] == "content_filtered"

        mod = httpx.post(f"{url}/v1/moderations", json={"input": ["a", "b"]}).json()
        assert [r["flagged"] for r in mod["results"]] == [True, True]
        assert mod["results"][0]["category_scores"]["sexual"] > 0.9
        assert mod["model"] == str(unsafe_prompt_model)

        # image mode has no prompt, so the prompt classifier is not involved
        assert infer(url, {"image": png_uri}).json()["artifacts"][0]["finishReason"] == "SUCCESS"
        assert 'outcome="filtered"' in httpx.get(f"{url}/v1/metrics").text


def test_image_classifier_filters_uploads_and_generated_images(
    make_settings, unsafe_image_model: Path, png_uri: str
) -> None:
    with running(make_settings(safety_image_model=str(unsafe_image_model))) as url:
        assert infer(url, {"image": png_uri}).json()["artifacts"][0]["finishReason"] == "CONTENT_FILTERED"
        assert infer(url, {"prompt": "a chair"}).json()["artifacts"][0]["finishReason"] == "CONTENT_FILTERED"
        mod = httpx.post(f"{url}/v1/moderations", json={"input": "a chair"}).json()
        assert mod["results"][0]["flagged"] is False  # the prompt classifier is the safe builtin


def test_default_tiny_classifiers_allow_content(tiny_url: str) -> None:
    mod = httpx.post(f"{tiny_url}/v1/moderations", json={"input": "a red chair"}).json()
    assert mod["id"].startswith("modr-") and mod["results"][0]["flagged"] is False
    assert mod["results"][0]["category_scores"]["sexual"] < 0.01


def test_safety_load_failure_fail_closed_refuses(make_settings, png_uri: str) -> None:
    settings = make_settings(safety_prompt_model="/nonexistent/classifier", safety_fail_closed=True, imagegen_model="")
    with running(settings, ready=False) as url:
        health = wait_loaded(url)
        assert httpx.get(f"{url}/v1/health/ready").status_code == 503
        assert health["status"] == "error" and health["backends"]["safety_prompt"]["state"] == "error"
        assert "SAFETY_FAIL_CLOSED=true" in health["backends"]["safety_prompt"]["detail"]
        refused = infer(url, {"image": png_uri})
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert httpx.post(f"{url}/v1/moderations", json={"input": "hi"}).status_code == 503
        assert httpx.get(f"{url}/v1/health/live").status_code == 200


def test_safety_load_failure_fail_open_allows_with_warning(make_settings) -> None:
    settings = make_settings(safety_prompt_model="/nonexistent/classifier", safety_fail_closed=False)
    with running(settings) as url:
        health = httpx.get(f"{url}/v1/health/ready").json()
        assert health["status"] == "ready" and "WARNING" in health["message"]
        assert health["backends"]["safety_prompt"]["state"] == "error"
        assert infer(url, {"prompt": "a chair"}).json()["artifacts"][0]["finishReason"] == "SUCCESS"
        mod = httpx.post(f"{url}/v1/moderations", json={"input": "hi"}).json()
        assert mod["results"][0]["flagged"] is False


def test_classifier_exception_is_an_error_not_a_filter(make_settings) -> None:
    """An exception whose text says 'NSFW' must not turn into CONTENT_FILTERED (the old wrapper's bug)."""
    settings = make_settings(safety_fail_closed=True)
    service = TrellisService(settings)
    with serve_in_thread(create_app(settings, service=service)) as url:
        wait_http(f"{url}/v1/health/ready", timeout_s=120)

        def explode(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("NSFW content detected")

        service.safety.prompt._pipe = explode
        r = infer(url, {"prompt": "a chair"})
        assert r.status_code == 500 and "NSFW content detected" in r.json()["error"]["message"]
        mod = httpx.post(f"{url}/v1/moderations", json={"input": "a chair"})
        assert mod.status_code == 503 and mod.json()["error"]["code"] == "safety_unavailable"
