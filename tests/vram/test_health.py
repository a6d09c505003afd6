"""The services report the GPU memory profile in /v1/health/ready, and the 3D worker takes the lease."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import nim_llm.app
from config import Settings
from nim_llm.app import create_app as create_llm_app
from nim_trellis.app import create_app
from nim_trellis.service import TrellisService
from servicekit.vram import PLANS, VramPlan, resolve_plan
from servicekit.vram_lease import LEASE_FILE, VramLease
from tests.support import serve_in_thread, wait_http
from tests.trellis.conftest import disc_image, encode, running, wait_job


@contextlib.contextmanager
def serve_3d(settings: Settings, plan: VramPlan) -> Iterator[str]:
    with serve_in_thread(create_app(settings, service=TrellisService(settings, vram=plan))) as url:
        wait_http(f"{url}/v1/health/ready", timeout_s=120)
        yield url


def test_3d_health_reports_profile_reason_and_lowered_knobs(make_settings) -> None:
    plan = resolve_plan("16gb", "cuda")
    with serve_3d(make_settings(imagegen_model=""), plan) as url:
        body = httpx.get(f"{url}/v1/health/ready").json()
    assert body["vram_profile"] == "16gb" and body["vram_reason"] == "VRAM_PROFILE=16gb" and body["vram_applies"]
    assert "4-bit LLM" in body["vram_lowered"] and "texture 512" in body["vram_lowered"]


def test_3d_health_on_cpu_changes_nothing(make_settings) -> None:
    with running(make_settings(imagegen_model="", vram_profile="16gb")) as url:
        body = httpx.get(f"{url}/v1/health/ready").json()
    assert body["vram_profile"] == "unlimited" and body["vram_applies"] is False and body["vram_lowered"] == []
    assert "cpu" in body["vram_reason"]


def test_3d_worker_waits_for_the_lease(make_settings, tmp_path: Path) -> None:
    settings = make_settings(imagegen_model="", run_dir=tmp_path)
    llm_side = VramLease(tmp_path / LEASE_FILE, enabled=True, role="llm")
    with serve_3d(settings, resolve_plan("16gb", "cuda")) as url:
        llm_side.acquire()
        try:
            job_id = httpx.post(f"{url}/v1/jobs", json={"image": encode(disc_image())}).json()["id"]
            time.sleep(1.0)
            held = httpx.get(f"{url}/v1/jobs/{job_id}").json()
            assert held["status"] == "running" and held["stage"] == "safety_image"  # waiting at the GPU stage
        finally:
            llm_side.release()
        assert wait_job(url, job_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_3d_worker_ignores_the_lease_when_the_plan_does_not_need_it(make_settings, tmp_path: Path) -> None:
    settings = make_settings(imagegen_model="", run_dir=tmp_path)
    llm_side = VramLease(tmp_path / LEASE_FILE, enabled=True, role="llm")
    with serve_3d(settings, resolve_plan("48gb", "cuda")) as url, llm_side.hold():
        job_id = httpx.post(f"{url}/v1/jobs", json={"image": encode(disc_image())}).json()["id"]
        assert wait_job(url, job_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_llm_health_reports_the_profile(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    monkeypatch.setattr(nim_llm.app, "llm_plan", lambda settings: PLANS["24gb"])
    settings = Settings(
        _env_file=None, profile="tiny", cache_dir=tmp_path_factory.mktemp("llm"), api_key=None, hf_token=None
    )
    app = create_llm_app(settings)
    with serve_in_thread(app) as url:
        body = wait_http(f"{url}/v1/health/ready", timeout_s=120).json()
        assert app.state.model.engine.max_batch_size == 4  # the plan's batch limit reached the engine
    assert settings.llm_max_batch_size == 8  # and the settings stayed as they were
    assert body["message"] == "Service is ready." and body["vram_profile"] == "24gb"
    assert "8-bit LLM" in body["vram_lowered"] and "LLM batch 4" in body["vram_lowered"]
    assert body["waiting_for_gpu"] is False
