"""Who may use the studio and what it serves, through the real app (app.py as a subprocess) over HTTP: an open
studio is refused where it would hand out the services' key or be reachable beyond localhost, wrong logins are
slowed down, and Gradio serves no file under DATA_DIR that no page has shown (the job store, other scenes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import ROOT, Settings
from studio.access import exposure_problem, is_loopback
from tests.studio.fake_stack import FakeStack, fake_stack
from tests.studio.live import base_env

pytestmark = pytest.mark.slow
LOGIN_DELAY_S = Settings.model_fields["ui_login_failure_delay_s"].default


def start_app(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """app.py with these settings, expected to exit at once (it refuses to start)."""
    full = {**os.environ, **base_env(tmp_path / "data", tmp_path / "cache"), "GRADIO_SERVER_PORT": "1", **env}
    return subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"API_KEY": "k-123456789"}, "API_KEY is set"),
        ({"GRADIO_SERVER_NAME": "0.0.0.0"}, "reachable beyond this machine (on 0.0.0.0)"),
        ({"UI_PUBLISH_ADDRESS": "192.168.1.20"}, "reachable beyond this machine (on 192.168.1.20)"),
    ],
    ids=["api-key", "all-interfaces", "published"],
)
def test_an_open_studio_refuses_to_start_and_says_what_to_set(tmp_path: Path, env: dict[str, str], reason: str) -> None:
    proc = start_app(tmp_path, **env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert reason in proc.stderr and "Set UI_AUTH_USER and UI_AUTH_PASSWORD" in proc.stderr, proc.stderr[-2000:]


def test_a_login_or_an_explicit_opt_out_lets_it_start() -> None:
    exposed = Settings(_env_file=None, api_key="k-123456789", gradio_server_name="0.0.0.0")  # type: ignore[call-arg]
    assert exposure_problem(exposed) is not None
    login = exposed.model_copy(update={"ui_auth_user": "ana"})
    assert exposure_problem(login) is None
    assert exposure_problem(exposed.model_copy(update={"ui_allow_open": True})) is None
    assert exposure_problem(Settings(_env_file=None)) is None  # the default: 127.0.0.1, no key  # type: ignore[call-arg]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("studio.example.com")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeStack]:
    """The app with a login; the key and address stay on their defaults."""
    with fake_stack(tmp_path_factory.mktemp("access"), UI_AUTH_USER="ana", UI_AUTH_PASSWORD="right-horse-9") as s:
        yield s


def login(app: str, password: str) -> int:
    r = httpx.post(f"{app}/login", data={"username": "ana", "password": password}, timeout=60)
    return r.status_code


def test_wrong_logins_wait_their_turn_and_the_right_one_still_works(guarded: FakeStack) -> None:
    async def attempts() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(password: str) -> int:
                r = await client.post(f"{guarded.app}/login", data={"username": "ana", "password": password})
                return r.status_code

            return list(await asyncio.gather(*(one(f"guess-{i}") for i in range(5))))

    started = time.monotonic()
    codes = asyncio.run(attempts())
    elapsed = time.monotonic() - started
    assert codes == [400] * 5
    # Five wrong guesses sent at once cannot finish sooner than five delays: the floor is the contract.
    assert elapsed >= 5 * LOGIN_DELAY_S * 0.95, elapsed
    assert login(guarded.app, "right-horse-9") == 200


def test_no_file_under_data_dir_is_served_unless_a_page_showed_its_scene(guarded: FakeStack) -> None:
    job = guarded.data_dir / "jobs" / "job-1" / "result.glb"
    other = guarded.data_dir / "scenes" / "20260101-000000-abcdef" / "images" / "obj-00000001-1.png"
    for path in (job, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"glTF not for you")
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{guarded.app}/login", data={"username": "ana", "password": "right-horse-9"}).is_success
        for path in (job, other):
            r = client.get(f"{guarded.app}/gradio_api/file={path.resolve()}")
            assert r.status_code == 403, (path, r.status_code)
