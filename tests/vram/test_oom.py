"""CUDA out-of-memory is never fatal: freed, retried once leaner, else failed with the profile to choose."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
from PIL import Image

from config import Settings
from nim_trellis.app import create_app
from nim_trellis.backends.base import MeshArtifact, MeshParams, StageReporter
from nim_trellis.backends.relief import ReliefBackend
from nim_trellis.imagegen.sana import SanaImageGenerator
from nim_trellis.jobs import JobQueue
from nim_trellis.service import TrellisService
from servicekit.vram import PLANS
from tests.support import serve_in_thread, wait_http
from tests.trellis.conftest import disc_image, encode, wait_job
from tests.vram.conftest import cuda_oom


class TextureOomBackend(ReliefBackend):
    """Relief that runs out of CUDA memory whenever asked for a texture (or always, with `always`)."""

    def __init__(self, settings: Settings, *, always: bool = False) -> None:
        super().__init__(settings)
        self.always = always
        self.calls: list[bool] = []

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        self.calls.append(params.no_texture)
        if self.always or not params.no_texture:
            raise cuda_oom()
        return super().image_to_mesh(image, params, report)


class BatchOomImages(SanaImageGenerator):
    """The tiny SANA model, but a batch of more than one image (or any, with `always`) runs out of memory."""

    def __init__(self, settings: Settings, *, always: bool = False) -> None:
        super().__init__(settings)
        self.always = always

    def generate(self, prompt: str, *, n: int, **kwargs: Any) -> list[tuple[Image.Image, int]]:
        if self.always or n > 1:
            raise cuda_oom()
        return super().generate(prompt, n=n, **kwargs)


@contextlib.contextmanager
def serve(settings: Settings, **parts: Any) -> Iterator[str]:
    service = TrellisService(settings, vram=PLANS["24gb"], **parts)
    with serve_in_thread(create_app(settings, service=service)) as url:
        wait_http(f"{url}/v1/health/ready", timeout_s=120)
        yield url


def test_3d_oom_retries_without_texture(make_settings) -> None:
    settings = make_settings(imagegen_model="")
    backend = TextureOomBackend(settings)
    with serve(settings, backend=backend) as url:
        job_id = httpx.post(f"{url}/v1/jobs", json={"image": encode(disc_image())}).json()["id"]
        body = wait_job(url, job_id, {"succeeded", "failed"})
        assert body["status"] == "succeeded", body
        assert backend.calls == [False, True]  # textured first, then the leaner retry
        assert "retried without texture" in body["note"] and "VRAM_PROFILE=16gb" in body["note"]
        assert 'trellis_oom_retries_total{kind="3d"} 1.0' in httpx.get(f"{url}/v1/metrics").text


def test_3d_oom_twice_fails_naming_a_profile(make_settings) -> None:
    settings = make_settings(imagegen_model="")
    backend = TextureOomBackend(settings, always=True)
    with serve(settings, backend=backend) as url:
        job_id = httpx.post(f"{url}/v1/jobs", json={"image": encode(disc_image())}).json()["id"]
        body = wait_job(url, job_id, {"succeeded", "failed"})
        assert body["status"] == "failed" and len(backend.calls) == 2
        assert "out of memory" in body["error"] and "VRAM_PROFILE=16gb" in body["error"]
        # the worker lives on: the next job runs (and fails the same way) instead of hanging
        again = httpx.post(f"{url}/v1/jobs", json={"image": encode(disc_image())}).json()["id"]
        assert wait_job(url, again, {"succeeded", "failed"})["status"] == "failed"
        assert httpx.get(f"{url}/v1/health/ready").status_code == 200


def test_images_oom_retries_one_at_a_time(make_settings) -> None:
    settings = make_settings()
    with serve(settings, imagegen=BatchOomImages(settings)) as url:
        resp = httpx.post(
            f"{url}/v1/images/generations", json={"prompt": "a red chair", "n": 2, "seed": 5}, timeout=120
        )
        assert resp.status_code == 200, resp.text
        assert [d["seed"] for d in resp.json()["data"]] == [5, 6]


def test_images_oom_twice_fails_naming_a_profile(make_settings) -> None:
    settings = make_settings()
    with serve(settings, imagegen=BatchOomImages(settings, always=True)) as url:
        resp = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a red chair"}, timeout=120)
        assert resp.status_code == 500
        message = resp.json()["error"]["message"]
        assert "out of memory" in message and "VRAM_PROFILE=16gb" in message


def test_queue_without_lean_variant_fails_with_advice(tmp_path) -> None:
    queue = JobQueue(
        max_queued=4,
        timeout_s=30,
        retention_s=60,
        results_dir=tmp_path,
        retry_after_s=1,
        oom_advice=PLANS["32gb"].oom_advice(),
    )
    queue.start()
    try:

        def oom(ctx: Any) -> None:
            raise cuda_oom()

        def crash(ctx: Any) -> None:
            raise RuntimeError("not a memory problem")

        failed, crashed = queue.submit("3d", oom, backend="x"), queue.submit("3d", crash, backend="x")
        crashed.done.result(timeout=30)
        assert failed.status == "failed" and "VRAM_PROFILE=24gb (now 32gb)" in str(failed.error)
        assert crashed.error == "RuntimeError: not a memory problem"  # other errors are not retried
    finally:
        queue.stop()
