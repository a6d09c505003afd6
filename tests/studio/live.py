"""Real processes for the slow studio tests: both services in the `tiny` profile and the studio app itself, each
started with its real entry point on a free port, stopped by its own process handle."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config import ROOT
from tests.support import free_port, wait_http

READY_TIMEOUT_S = 240.0


@dataclass
class Stack:
    llm: str
    trellis: str
    app: str
    data_dir: Path
    log_dir: Path


def base_env(data_dir: Path, cache_dir: Path, profile: str = "tiny") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UI_", "LLM_", "TRELLIS_", "GRADIO_"))}
    env.update(
        CHAT3D_PROFILE=profile,
        DATA_DIR=str(data_dir),
        CACHE_DIR=str(cache_dir),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_RUN_HISTORY="False",
        LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    return env


# Linux: a child asks for SIGTERM when its parent dies (PR_SET_PDEATHSIG survives exec), so services never
# outlive a test run that was killed before its clean-up ran. A launcher does it, because `preexec_fn` is unsafe
# in a process with threads (the fast tests run uvicorn threads).
LAUNCHER = (
    "import ctypes, os, sys\n"
    "try:\n    ctypes.CDLL('libc.so.6').prctl(1, 15)\nexcept OSError:\n    pass\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_http(url, timeout_s=READY_TIMEOUT_S)
    except TimeoutError as e:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{url} not ready (exit code {proc.poll()}); log tail:\n{tail}") from e


@contextlib.contextmanager
def studio_app(
    data_dir: Path, log_dir: Path, env: dict[str, str], llm: str, trellis: str, **app_env: str
) -> Iterator[str]:
    """The studio app (app.py, its real entry point) on a free port, talking to the given services; yields its URL."""
    port = free_port()
    ui_env = {
        **env,
        "DATA_DIR": str(data_dir),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "LLM_BASE_URL": f"{llm}/v1",
        "TRELLIS_BASE_URL": trellis,
        **app_env,
    }
    with process(["app.py"], ui_env, log_dir / "app.log") as ap:
        app = f"http://127.0.0.1:{port}"
        wait_ready(f"{app}/", ap, log_dir / "app.log")
        yield app


@contextlib.contextmanager
def stack(root: Path, cache_dir: Path, profile: str = "tiny", **app_env: str) -> Iterator[Stack]:
    """Start LLM and 3D services (in parallel), then the studio app; yield their URLs."""
    data_dir, log_dir = root / "data", root / "logs"
    env = base_env(data_dir, cache_dir, profile)
    llm_port, trellis_port = free_port(), free_port()
    llm, trellis = f"http://127.0.0.1:{llm_port}", f"http://127.0.0.1:{trellis_port}"
    with (
        process(["-m", "nim_llm.run_llama_local"], {**env, "LLM_PORT": str(llm_port)}, log_dir / "llm.log") as lp,
        process(
            ["-m", "nim_trellis.run_trellis_local"], {**env, "TRELLIS_PORT": str(trellis_port)}, log_dir / "trellis.log"
        ) as tp,
    ):
        wait_ready(f"{llm}/v1/health/ready", lp, log_dir / "llm.log")
        wait_ready(f"{trellis}/v1/health/ready", tp, log_dir / "trellis.log")
        with studio_app(data_dir, log_dir, env, llm, trellis, **app_env) as app:
            yield Stack(llm, trellis, app, data_dir, log_dir)
