"""Fixtures for the 3D service tests: tiny-profile settings, real uvicorn servers, test images, test backends."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from config import Settings
from nim_trellis.app import create_app
from nim_trellis.backends.base import MeshArtifact, MeshParams, StageReporter
from nim_trellis.backends.relief import ReliefBackend
from tests.support import serve_in_thread, wait_http

READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per session, so the tiny models are built once."""
    return tmp_path_factory.mktemp("trellis-cache")


@pytest.fixture
def make_settings(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "profile": "tiny",
            "data_dir": tmp_path_factory.mktemp("data"),
            "cache_dir": model_cache,
            "api_key": None,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@contextlib.contextmanager
def running(settings: Settings, *, backend: Any = None, ready: bool = True) -> Iterator[str]:
    """A real server on a free port; waits for readiness unless `ready=False`."""
    with serve_in_thread(create_app(settings, backend=backend)) as url:
        if ready:
            wait_http(f"{url}/v1/health/ready", timeout_s=READY_TIMEOUT_S)
        yield url


@pytest.fixture(scope="module")
def tiny_url(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The plain tiny profile (relief + tiny SANA + tiny classifiers), shared by a test module."""
    settings = Settings(
        _env_file=None, profile="tiny", data_dir=tmp_path_factory.mktemp("data"), cache_dir=model_cache, api_key=None
    )
    with running(settings) as url:
        yield url


# --- images ------------------------------------------------------------------------------------------------
def disc_image(size: int = 256, *, alpha: bool = True, colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    """A red disc crossed by a green bar, on transparency (RGBA) or on a white background (RGB)."""
    bg = (0, 0, 0, 0) if alpha else (255, 255, 255, 255)
    img = Image.new("RGBA", (size, size), bg)
    draw = ImageDraw.Draw(img)
    m = size // 6
    draw.ellipse((m, m, size - m, size - m), fill=(*colour, 255))
    draw.rectangle((size // 2 - m // 2, m // 2, size // 2 + m // 2, size - m // 2), fill=(30, 160, 60, 255))
    return img if alpha else img.convert("RGB")


def encode(img: Image.Image, fmt: str = "PNG", *, data_uri: bool = True) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{b64}" if data_uri else b64


@pytest.fixture
def png_uri() -> str:
    return encode(disc_image())


# --- HTTP helpers ------------------------------------------------------------------------------------------
def wait_loaded(url: str, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """The readiness body once loading has finished, whatever its outcome."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/health/ready", timeout=10).json()
        if body["status"] != "loading":
            return body
        time.sleep(0.05)
    raise TimeoutError(f"{url} still loading after {timeout_s}s: {body}")


def wait_job(url: str, job_id: str, states: set[str], timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if body.get("status") in states:
            return body
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} never reached {states}; last {body}")


# --- controllable backends ---------------------------------------------------------------------------------
class GatedBackend(ReliefBackend):
    """Relief, but each job enters stage 'waiting' and blocks until `gate` is set, then holds `hold_s`;
    records how many jobs ever ran at once."""

    def __init__(self, settings: Settings, hold_s: float = 0.0) -> None:
        super().__init__(settings)
        self.hold_s = hold_s
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            report.stage("waiting", 0.05)
            self.entered.release()
            self.gate.wait(timeout=30)
            time.sleep(self.hold_s)
            return super().image_to_mesh(image, params, report)
        finally:
            with self._lock:
                self.active -= 1


class FailingBackend(ReliefBackend):
    """Relief that raises for one seed, to show a backend failure fails only that job."""

    FAIL_SEED = 13

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        if params.seed == self.FAIL_SEED:
            raise RuntimeError("simulated backend crash")
        return super().image_to_mesh(image, params, report)
