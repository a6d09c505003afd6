"""Fixtures for the studio tests: a workspace in a temp dir, small real PNGs and GLBs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from studio.workspace import Workspace
from tests.studio.live import Stack, stack

# Small plans keep the tiny model's structured call short on 2 CPU cores.
LIVE_APP_ENV = {"UI_MAX_OBJECTS": "2", "UI_PLAN_MAX_TOKENS": "1200", "UI_JOB_POLL_S": "0.2"}


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both real services (tiny profile) and the studio app, once per test session (slow tests only)."""
    root = tmp_path_factory.mktemp("studio-live")
    with stack(root, tmp_path_factory.getbasetemp() / "model-cache", **LIVE_APP_ENV) as s:
        yield s


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
