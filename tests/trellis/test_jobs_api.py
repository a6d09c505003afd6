"""The jobs API and the single worker: lifecycle, cancel, queue limits, timeouts, failures, serialisation."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time

import httpx
import trimesh

from nim_trellis.jobs import STORE_FILE
from tests.trellis.conftest import FailingBackend, GatedBackend, disc_image, encode, running, wait_job

FINISHED = {"succeeded", "failed", "cancelled", "filtered"}


def submit(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=body, timeout=30)


def test_job_lifecycle_succeeds_with_result_file(tiny_url: str, png_uri: str) -> None:
    created = submit(tiny_url, {"image": png_uri, "seed": 99})
    assert created.status_code == 202
    body = created.json()
    assert body["status"] == "queued" and isinstance(body["queue_position"], int)
    done = wait_job(tiny_url, body["id"], FINISHED)
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    assert done["seed"] == 99 and done["backend"] == "relief" and done["output_format"] == "glb"
    assert done["finished"] >= done["created"] and done["queue_position"] is None
    result = httpx.get(f"{tiny_url}/v1/jobs/{body['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "model/gltf-binary"
    assert result.headers["x-seed"] == "99" and result.headers["x-backend"] == "relief"
    mesh = trimesh.load(trimesh.util.wrap_as_stream(result.content), file_type="glb", force="mesh")
    assert mesh.is_watertight


def test_job_stl_result_media_type(tiny_url: str, png_uri: str) -> None:
    job_id = submit(tiny_url, {"image": png_uri, "output_format": "stl"}).json()["id"]
    wait_job(tiny_url, job_id, FINISHED)
    result = httpx.get(f"{tiny_url}/v1/jobs/{job_id}/result")
    assert result.headers["content-type"] == "model/stl" and len(result.content) > 84


def test_job_unknown_id_404(tiny_url: str) -> None:
    for path in ("", "/result"):
        resp = httpx.get(f"{tiny_url}/v1/jobs/does-not-exist{path}")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "job_not_found"
    assert httpx.delete(f"{tiny_url}/v1/jobs/does-not-exist").status_code == 404


def test_job_bad_input_rejected_before_queueing(tiny_url: str) -> None:
    resp = submit(tiny_url, {"image": "not base64 at all!"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "image"


def test_job_rejects_what_infer_rejects_with_the_same_limits(tiny_url: str) -> None:
    tiny = submit(tiny_url, {"image": encode(disc_image(1))})
    assert tiny.status_code == 400 and tiny.json()["error"]["param"] == "image"
    assert "3D needs at least 64×64 (MIN_IMAGE_SIDE)" in tiny.json()["error"]["message"]
    long = submit(tiny_url, {"prompt": "x" * 1001})
    assert long.status_code == 400 and "MAX_PROMPT_CHARS" in long.json()["error"]["message"]


def test_job_cancel_queued_and_running(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="")
    backend = GatedBackend(settings)
    with running(settings, backend=backend) as url:
        first = submit(url, {"image": png_uri}).json()["id"]
        assert backend.entered.acquire(timeout=10)
        second = submit(url, {"image": png_uri}).json()
        assert second["queue_position"] == 1
        running_state = httpx.get(f"{url}/v1/jobs/{first}").json()
        assert running_state["status"] == "running" and running_state["stage"] == "waiting"
        assert httpx.get(f"{url}/v1/jobs/{first}/result").status_code == 409

        cancelled = httpx.delete(f"{url}/v1/jobs/{second['id']}").json()
        assert cancelled["status"] == "cancelled" and cancelled["queue_position"] is None
        asked = httpx.delete(f"{url}/v1/jobs/{first}").json()
        assert asked["status"] == "running"  # stops at the next stage boundary, not mid-stage
        backend.gate.set()
        final = wait_job(url, first, FINISHED)
        assert final["status"] == "cancelled"
        assert httpx.get(f"{url}/v1/jobs/{first}/result").status_code == 409
        # the worker is free again
        third = submit(url, {"image": png_uri}).json()["id"]
        assert wait_job(url, third, FINISHED)["status"] == "succeeded"


def test_job_queue_full_gets_429_with_retry_after(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="", jobs_queue_size=2, trellis_retry_after_s=7)
    backend = GatedBackend(settings)
    with running(settings, backend=backend) as url:
        ids = [submit(url, {"image": png_uri}).json()["id"]]
        assert backend.entered.acquire(timeout=10)  # first job is running, so the queue is empty
        ids += [submit(url, {"image": png_uri}).json()["id"] for _ in range(2)]
        full = submit(url, {"image": png_uri})
        assert full.status_code == 429 and full.headers["retry-after"] == "7"
        assert full.json()["error"]["code"] == "queue_full"
        assert httpx.post(f"{url}/v1/infer", json={"image": png_uri}).status_code == 429
        assert httpx.get(f"{url}/v1/health/ready").json()["queue_depth"] == 2
        backend.gate.set()
        assert [wait_job(url, i, FINISHED)["status"] for i in ids] == ["succeeded"] * 3
        assert submit(url, {"image": png_uri}).status_code == 202


def test_job_backend_exception_fails_only_that_job(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="")
    with running(settings, backend=FailingBackend(settings)) as url:
        bad = submit(url, {"image": png_uri, "seed": FailingBackend.FAIL_SEED}).json()["id"]
        good = submit(url, {"image": png_uri, "seed": 14}).json()["id"]
        failed = wait_job(url, bad, FINISHED)
        assert failed["status"] == "failed" and "simulated backend crash" in failed["error"]
        assert wait_job(url, good, FINISHED)["status"] == "succeeded"
        r = httpx.post(f"{url}/v1/infer", json={"image": png_uri, "seed": FailingBackend.FAIL_SEED}, timeout=30)
        # A failed /v1/infer is an error answer with the reason, never 200 with an empty artifact.
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        assert "simulated backend crash" in r.json()["error"]["message"]
        metrics = httpx.get(f"{url}/v1/metrics").text
        assert 'trellis_jobs_total{kind="3d",outcome="failed"} 2.0' in metrics


def test_job_timeout_fails_job_and_frees_waiters(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="", job_timeout_s=0.5)
    backend = GatedBackend(settings)
    with running(settings, backend=backend) as url:
        job_id = submit(url, {"image": png_uri}).json()["id"]
        started = time.monotonic()
        failed = wait_job(url, job_id, FINISHED, timeout_s=10)
        assert failed["status"] == "failed" and "timed out" in failed["error"]
        assert time.monotonic() - started < 5  # the watchdog answered while the backend was still blocked
        backend.gate.set()
        assert wait_job(url, job_id, FINISHED)["status"] == "failed"  # the late result is dropped


def test_infer_client_gone_cancels_its_queued_job(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="", trellis_disconnect_poll_s=0.1)
    backend = GatedBackend(settings)
    with running(settings, backend=backend) as url:
        blocker = submit(url, {"image": png_uri}).json()["id"]
        assert backend.entered.acquire(timeout=10)
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{url}/v1/infer", json={"image": png_uri}, timeout=1.0)  # gives up while queued
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/health/ready").json()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/v1/health/ready").json()["queue_depth"] == 0
        assert 'trellis_jobs_total{kind="3d",outcome="cancelled"} 1.0' in httpx.get(f"{url}/v1/metrics").text
        backend.gate.set()
        assert wait_job(url, blocker, FINISHED)["status"] == "succeeded"


def test_job_expires_after_retention(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="", job_retention_s=1.0)
    with running(settings) as url:
        job_id = submit(url, {"image": png_uri}).json()["id"]
        wait_job(url, job_id, FINISHED)
        result_dir = settings.data_dir / "jobs" / job_id
        assert result_dir.exists()
        time.sleep(1.5)
        assert httpx.get(f"{url}/v1/jobs/{job_id}/result").status_code == 404
        assert not result_dir.exists()


def test_infer_concurrent_calls_serialised_on_worker(make_settings, png_uri: str) -> None:
    settings = make_settings(imagegen_model="")
    backend = GatedBackend(settings, hold_s=0.1)  # long enough that parallel runs would overlap
    backend.gate.set()
    with running(settings, backend=backend) as url:

        def call(seed: int) -> dict:
            resp = httpx.post(f"{url}/v1/infer", json={"image": png_uri, "seed": seed}, timeout=60)
            return resp.json()["artifacts"][0]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            arts = list(pool.map(call, range(1, 7)))
        assert [a["finishReason"] for a in arts] == ["SUCCESS"] * 6
        assert [a["seed"] for a in arts] == list(range(1, 7))
        assert backend.max_active == 1
        # /v1/infer cleans up after itself: nothing left on disk but the job store (which holds no /v1/infer job)
        assert not [p for p in (settings.data_dir / "jobs").iterdir() if not p.name.startswith(STORE_FILE)]
