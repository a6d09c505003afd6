"""Fixtures for the studio tests: fake services with a studio context around them, the real stack on its
defaults, a workspace in a temp dir, small real PNGs and GLBs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trimesh
from PIL import Image

from config import Settings
from studio.context import StudioContext
from studio.workspace import Workspace
from tests.studio import chromium
from tests.studio.fake_stack import FakeStack, fake_stack
from tests.studio.fakes import fake_llm, fake_trellis
from tests.studio.live import Stack, stack
from tests.support import serve_in_thread


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both real services and the studio app in the `tiny` profile on its untouched defaults, once per test
    session (slow tests only)."""
    root = tmp_path_factory.mktemp("studio-live")
    with stack(root, tmp_path_factory.getbasetemp() / "model-cache") as s:
        yield s


@pytest.fixture(scope="module")
def fake_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeStack]:
    """The real app on its defaults talking to fake services, one per test module."""
    with fake_stack(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium (tests that use it skip themselves where Chromium is not installed)."""
    with chromium.chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """The fake LLM and 3D services (tests/studio/fakes.py) and the state dicts that steer them."""
    llm_state: dict[str, Any] = {"plans": []}
    trellis_state: dict[str, Any] = {}
    with serve_in_thread(fake_llm(llm_state)) as llm, serve_in_thread(fake_trellis(trellis_state)) as trellis:
        yield llm, trellis, llm_state, trellis_state


@pytest.fixture
def make_ctx(services: tuple[str, str, dict, dict], tmp_path: Path) -> Callable[..., StudioContext]:
    """A studio context on the fake services, whose state starts afresh; keyword arguments override settings."""
    llm, trellis, llm_state, trellis_state = services
    llm_state.clear()
    llm_state.update(plans=[], busy=0, log=[])
    trellis_state.update(flag=[], job_polls=2, log=[], imagegen_off=False, health_delay_s=0, draw=None, model=None)

    def make(**overrides: Any) -> StudioContext:
        values: dict[str, Any] = {
            "llm_base_url": llm + "/v1",
            "trellis_base_url": trellis,
            "data_dir": tmp_path / "data",
            "ui_job_poll_s": 0.05,
            "imagegen_size": 64,
            **overrides,
        }
        return StudioContext.from_settings(Settings(_env_file=None, **values))

    return make


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "data")


def png_bytes(colour: tuple[int, int, int] = (200, 40, 40), size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def glb_bytes(extents: tuple[float, float, float] = (2.0, 1.0, 0.5)) -> bytes:
    box = trimesh.creation.box(extents=extents)
    box.visual.face_colors = (30, 120, 200, 255)
    return bytes(trimesh.Scene(box).export(file_type="glb"))
