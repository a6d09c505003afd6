"""`./install.sh --native` end to end on this machine, in a temp copy of the repository.

The faster equivalent of a fresh install: the venv is created by install.sh itself, but with
`CHAT3D_VENV_ARGS=--system-site-packages` (and, when the tests run inside a venv, PYTHONPATH pointing at its
packages), so `pip install -r ...` finds everything installed and downloads nothing. Every other step is the real
script path: .env from .env.example, the install stamp, start.sh --daemon, supervisord in the background, waiting
for readiness, then a second run that must change nothing, then --stop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, alive, clean_env, repo_files, run_install_sh, wait_gone
from tests.support import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_copy() -> Iterator[Path]:
    dest = Path(tempfile.mkdtemp(prefix="c3d-inst-"))  # short: the socket lives in data/run under it
    for rel in repo_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def install_env(ops_cache: Path) -> dict[str, str]:
    env = clean_env(
        PYTHON=sys.executable,
        CHAT3D_VENV_ARGS="--system-site-packages",
        CACHE_DIR=str(ops_cache),
        LLM_PORT=str(free_port()),
        TRELLIS_PORT=str(free_port()),
        GRADIO_SERVER_PORT=str(free_port()),
        WAIT_TIMEOUT="240",
    )
    if sys.prefix != sys.base_prefix:  # running inside a venv: its packages are not the "system" ones
        env["PYTHONPATH"] = str(shared_packages(ops_cache / "shared-site-packages"))
    return env


def shared_packages(dest: Path) -> Path:
    """This venv's packages, for the copy's venv to find instead of downloading them, minus this checkout's own
    editable install: its finder module, first on PYTHONPATH, would make the copy run this checkout's code."""
    if not dest.exists():
        dest.mkdir(parents=True)
        for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
            if not entry.name.startswith(("__editable__", "chat_to_3d")):
                (dest / entry.name).symlink_to(entry)
    return dest


def run_install(repo: Path, env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return run_install_sh(repo, env, "--native", *args, timeout=timeout)


def supervisord_pid(repo: Path) -> int:
    pidfile = repo / "data" / "run" / "supervisord.pid"
    return int(pidfile.read_text()) if pidfile.exists() else 0


@pytest.mark.timeout(600)
def test_install_native_reaches_ready_and_second_run_changes_nothing(repo_copy: Path, ops_cache: Path) -> None:
    env = install_env(ops_cache)
    try:
        first = run_install(repo_copy, env, "--profile", "tiny")
        report = f"stdout:\n{first.stdout[-4000:]}\nstderr:\n{first.stderr[-4000:]}"
        assert first.returncode == 0, report
        assert f"ready: open http://localhost:{env['GRADIO_SERVER_PORT']}" in first.stdout, report
        assert "installing the requirements for profile tiny" in first.stdout
        assert "./install.sh --stop" in first.stdout

        dotenv = repo_copy / ".env"
        stamp = repo_copy / ".venv" / ".chat3d-install-stamp"
        assert "CHAT3D_PROFILE=tiny\n" in dotenv.read_text() and "\nHF_TOKEN=\n" in dotenv.read_text()
        before = (dotenv.read_bytes(), dotenv.stat().st_mtime_ns, stamp.read_text(), stamp.stat().st_mtime_ns)
        pid = supervisord_pid(repo_copy)
        assert pid and alive(pid)

        second = run_install(repo_copy, env, timeout=300)  # no --profile: it comes from .env now
        assert second.returncode == 0, second.stdout + second.stderr
        assert "keeping the existing .env" in second.stdout
        assert "requirements unchanged since the last install: nothing to install" in second.stdout
        assert f"already running (supervisord pid {pid})" in second.stdout
        assert "installing the requirements" not in second.stdout
        after = (dotenv.read_bytes(), dotenv.stat().st_mtime_ns, stamp.read_text(), stamp.stat().st_mtime_ns)
        assert after == before and supervisord_pid(repo_copy) == pid

        status = run_install(repo_copy, env, "--status", timeout=60)
        assert status.returncode == 0 and status.stdout.count("RUNNING") == 4, status.stdout
    finally:
        pid = supervisord_pid(repo_copy)
        stop = run_install(repo_copy, env, "--stop", timeout=120)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert not wait_gone({pid}, timeout_s=10)
