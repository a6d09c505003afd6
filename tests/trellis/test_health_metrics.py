"""Health is a contract: live at once, ready only when the configured backends are loaded; metrics in Prometheus."""

from __future__ import annotations

import threading
import time

import httpx

from config import Settings
from nim_trellis.backends.relief import ReliefBackend
from tests.trellis.conftest import running, wait_job, wait_loaded


class SlowLoadingBackend(ReliefBackend):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.release = threading.Event()

    def load(self) -> None:
        self.release.wait(timeout=30)


class BrokenBackend(ReliefBackend):
    def load(self) -> None:
        raise OSError("checkpoint folder /models/trellis is missing")


def test_health_live_at_once_and_ready_after_loading(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="", trellis_retry_after_s=3)
    backend = SlowLoadingBackend(settings)
    with running(settings, backend=backend, ready=False) as url:
        started = time.monotonic()
        assert httpx.get(f"{url}/v1/health/live").status_code == 200
        assert time.monotonic() - started < 2
        loading = httpx.get(f"{url}/v1/health/ready")
        assert loading.status_code == 503
        body = loading.json()
        assert body["status"] == "loading" and body["backends"]["3d"]["state"] == "loading"
        assert body["profile"] == "tiny" and body["queue_depth"] == 0
        refused = httpx.post(f"{url}/v1/infer", json={"image": png_uri})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "not_ready"
        backend.release.set()
        ready = wait_loaded(url)
        assert ready["status"] == "ready" and set(ready["backends"]) == {
            "3d",
            "imagegen",
            "safety_prompt",
            "safety_image",
        }
        assert ready["backends"]["imagegen"]["state"] == "off"


def test_health_reports_backend_load_error(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="")
    with running(settings, backend=BrokenBackend(settings), ready=False) as url:
        body = wait_loaded(url)
        assert body["status"] == "error" and "checkpoint folder" in body["message"]
        assert httpx.get(f"{url}/v1/health/ready").status_code == 503
        refused = httpx.post(f"{url}/v1/jobs", json={"image": png_uri})
        assert refused.status_code == 503 and "checkpoint folder" in refused.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/health/live").status_code == 200


def test_metrics_expose_queue_outcomes_and_stages(tiny_url: str, png_uri: str) -> None:
    job_id = httpx.post(f"{tiny_url}/v1/jobs", json={"image": png_uri}).json()["id"]
    wait_job(tiny_url, job_id, {"succeeded"})
    resp = httpx.get(f"{tiny_url}/v1/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert "trellis_queue_depth 0.0" in text
    assert 'trellis_jobs_total{kind="3d",outcome="succeeded"}' in text
    for stage in ("safety_image", "silhouette", "geometry", "export"):
        assert f'trellis_stage_duration_seconds_count{{stage="{stage}"}}' in text
