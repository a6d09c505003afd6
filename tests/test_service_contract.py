"""The HTTP contract both model services share (servicekit), checked against each of them over real HTTP: API-key
auth, the body limit (also for chunked uploads), the error envelope, the health bodies and the metrics route."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from config import Settings
from nim_llm.app import create_app as create_llm
from nim_trellis.app import body_limit
from nim_trellis.app import create_app as create_3d
from tests.support import serve_in_thread, wait_http

KEY = "contract-test-key"
LIMIT_BYTES = 200_000  # small limits: the body limit is what these tests check


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    post_path: str  # a POST route behind the key
    limit: int


def settings_for(tmp: Path, cache: Path) -> Settings:
    return Settings(
        _env_file=None,
        profile="tiny",
        data_dir=tmp,
        cache_dir=cache,
        api_key=KEY,
        llm_max_request_bytes=LIMIT_BYTES,
        max_image_bytes=LIMIT_BYTES,
    )


SERVICES: dict[str, tuple[Callable[[Settings], object], str, Callable[[Settings], int]]] = {
    "llm": (create_llm, "/v1/chat/completions", lambda s: s.llm_max_request_bytes),
    "3d": (create_3d, "/v1/infer", body_limit),
}


@pytest.fixture(scope="module", params=sorted(SERVICES))
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    create, post_path, limit = SERVICES[request.param]
    settings = settings_for(tmp_path_factory.mktemp("data"), tmp_path_factory.getbasetemp() / "contract-cache")
    with serve_in_thread(create(settings)) as url:
        wait_http(f"{url}/v1/health/ready", timeout_s=180)
        yield Service(request.param, url, post_path, limit(settings))


def auth(value: str) -> dict[str, str]:
    return {"Authorization": value}


def test_api_key_scheme_is_case_insensitive_and_the_key_is_required(service: Service) -> None:
    url = service.url + service.post_path
    missing = httpx.post(url, json={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json={}, headers=auth(f"Bearer {KEY}x")).status_code == 401
    for scheme in ("Bearer", "bearer", "BEARER"):
        # Past the key check, an empty body is a validation error: the key was accepted.
        assert httpx.post(url, json={}, headers=auth(f"{scheme} {KEY}")).status_code == 400, scheme
    for open_path in ("/v1/health/live", "/v1/health/ready", "/v1/metrics"):
        assert httpx.get(service.url + open_path).status_code == 200, open_path


DOC_PATHS = ("/docs", "/redoc", "/openapi.json")


def test_api_docs_need_the_key_when_it_is_set(service: Service) -> None:
    """The schema lists every route and field: what a prober wants first, so it is behind the key like the API."""
    for path in DOC_PATHS:
        missing = httpx.get(service.url + path)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.get(service.url + path, headers=auth(f"Bearer {KEY}x")).status_code == 401, path
        assert httpx.get(service.url + path, headers=auth(f"Bearer {KEY}")).status_code == 200, path
    schema = httpx.get(service.url + "/openapi.json", headers=auth(f"Bearer {KEY}")).json()
    assert service.post_path in schema["paths"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_api_docs_stay_open_without_an_api_key(name: str, tmp_path: Path) -> None:
    """No model is needed for the docs: the services start with nothing to load and answer at once."""
    create = SERVICES[name][0]
    settings = Settings(
        _env_file=None,
        profile="tiny",
        data_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        api_key=None,
        llm_model=str(tmp_path / "no-model"),
        imagegen_model="",
        safety_prompt_model="",
        safety_image_model="",
    )
    with serve_in_thread(create(settings)) as url:
        for path in DOC_PATHS:
            assert httpx.get(url + path).status_code == 200, path


def test_body_limit_holds_for_declared_and_chunked_bodies(service: Service) -> None:
    url, headers = service.url + service.post_path, auth(f"Bearer {KEY}")
    big = b"x" * (service.limit + 1)
    declared = httpx.post(url, content=big, headers={**headers, "content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count what streams in
        for _ in range(4 * service.limit // 65_536 + 4):
            yield b"x" * 65_536

    chunked = httpx.post(url, content=chunks(), headers={**headers, "content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    assert "bytes" in chunked.json()["error"]["message"]


def test_errors_use_the_openai_envelope(service: Service) -> None:
    headers = {**auth(f"Bearer {KEY}"), "content-type": "application/json"}
    broken = httpx.post(service.url + service.post_path, content=b'{"broken": ', headers=headers)
    assert broken.status_code == 400
    assert set(broken.json()["error"]) == {"message", "type", "param", "code"}
    assert broken.json()["error"]["code"] == "invalid_json"
    nowhere = httpx.get(service.url + "/v1/nothing-here", headers=headers)
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found_error"


def test_health_bodies_have_one_shape(service: Service) -> None:
    live = httpx.get(service.url + "/v1/health/live").json()
    assert live == {"object": "health.response", "status": "live", "message": "Service is live."}
    ready = httpx.get(service.url + "/v1/health/ready").json()
    assert (ready["object"], ready["status"]) == ("health.response", "ready") and ready["message"]
    assert ready["vram_profile"] and ready["vram_applies"] is False  # the GPU memory plan is reported by both


def test_metrics_are_prometheus_text(service: Service) -> None:
    r = httpx.get(service.url + "/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# HELP" in r.text and "# TYPE" in r.text
