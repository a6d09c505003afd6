"""The app's wiring contract: named API endpoints, one GPU concurrency group, bounded queue, launch settings."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
from pydantic import SecretStr

import app as studio_app
from config import Settings
from studio.access import LoginGuard, ServedFiles
from studio.events import GPU


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("data"),
        ui_queue_size=7,  # type: ignore[call-arg]
        ui_max_objects=3,
        ui_gpu_concurrency=2,
    )


@pytest.fixture(scope="module")
def demo(settings: Settings) -> object:
    return studio_app.create_app(settings)


def test_named_endpoints_drive_a_whole_scene(demo: object) -> None:
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}  # type: ignore[attr-defined]
    assert {
        "chat",
        "generate_images",
        "generate_3d",
        "cancel_3d",
        "export",
        "scene",
        "new_scene",
        "open_scene",
    } <= names


# Scripts and tests call these through gradio_client: their parameters (in order) and number of outputs are a contract.
NAMED_ENDPOINTS = {
    "/chat": (["history", "mode"], 2),  # mode: "plan" (the default) or "ask"
    "/generate_images": ([], 1),
    "/generate_3d": (["seed", "ss_steps", "slat_steps", "ss_cfg", "slat_cfg", "no_texture"], 1),
    "/cancel_3d": ([], 0),
    "/export": ([], 2),
    "/scene": ([], 1),
    "/new_scene": ([], 2),
    "/open_scene": (["scene_id"], 2),
}


def test_named_endpoints_keep_their_parameters(demo: object) -> None:
    endpoints = demo.get_api_info()["named_endpoints"]  # type: ignore[attr-defined]
    found = {
        name: ([p["parameter_name"] for p in endpoints[name]["parameters"]], len(endpoints[name]["returns"]))
        for name in NAMED_ENDPOINTS
    }
    assert found == NAMED_ENDPOINTS


def test_gpu_bound_events_share_one_concurrency_group(demo: object) -> None:
    fns = list(demo.fns.values())  # type: ignore[attr-defined]
    gpu_names = {fn.api_name for fn in fns if fn.concurrency_id == GPU}
    assert {"chat", "generate_images", "generate_3d"} <= gpu_names
    assert {fn.concurrency_limit for fn in fns if fn.concurrency_id == GPU} == {2}
    assert all(fn.concurrency_id != GPU for fn in fns if fn.api_name in ("cancel_3d", "export"))


def test_queue_is_bounded(demo: object) -> None:
    assert demo._queue.max_size == 7  # type: ignore[attr-defined]


def test_launch_serves_only_shown_scenes_without_history_or_auth(settings: Settings) -> None:
    served = ServedFiles()
    kwargs = studio_app.launch_kwargs(settings, served)
    assert kwargs["allowed_paths"] is served and not list(served)  # nothing under DATA_DIR until a scene is shown
    assert kwargs["run_history"] is False and kwargs["auth"] is None
    assert "title" in str(kwargs["js"])  # disabled buttons get their reason as a tooltip
    assert (kwargs["server_name"], kwargs["server_port"]) == (settings.gradio_server_name, settings.gradio_server_port)


def test_login_comes_from_settings(settings: Settings) -> None:
    with_auth = settings.model_copy(update={"ui_auth_user": "ana", "ui_auth_password": SecretStr("s3cret-pass")})
    check = studio_app.launch_kwargs(with_auth, ServedFiles())["auth"]
    assert inspect.iscoroutinefunction(check)  # what Gradio awaits; anything else it reads as a plain bool
    assert isinstance(check.__self__, LoginGuard)  # type: ignore[attr-defined]
    assert asyncio.run(check("ana", "s3cret-pass")) is True  # type: ignore[operator]


def test_the_ui_process_never_imports_torch() -> None:
    import subprocess
    import sys

    code = "import sys, app, studio.ui, studio.export; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(studio_app.__file__).parent, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
