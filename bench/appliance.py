"""The appliance started the way users start it, for benchmarks: `start.sh` in the foreground (supervisord), with
an environment that sets only ports, data folders and offline flags, so every other setting is the profile's
default. `started(...)` yields the seconds each program took to become ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {"llm": "run_llama_local", "trellis": "run_trellis_local", "ui": "app.py"}  # name -> command marker
READY_TIMEOUT_S = 900.0
# What start.sh may need from the caller's environment: the toolchain and GPU variables, nothing of the settings.
KEEP = ("PATH", "HOME", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_HOME", "TORCH_EXTENSIONS_DIR", "NVCC_APPEND_FLAGS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(work: Path, profile: str) -> dict[str, str]:
    """`profile` with its defaults; only free ports, folders under `work` and offline operation are set."""
    env = {k: v for k, v in os.environ.items() if k in KEEP or k.startswith(("NCCL_", "NVIDIA_"))}
    env.update(
        CHAT3D_PROFILE=profile,
        CHAT3D_PYTHON=sys.executable,
        DATA_DIR=str(work / "data"),
        LOG_DIR=str(work / "logs"),
        RUN_DIR=str(work / "run"),
        CACHE_DIR=str(work / "cache"),
        LLM_PORT=str(free_port()),
        TRELLIS_PORT=str(free_port()),
        GRADIO_SERVER_PORT=str(free_port()),
        GRADIO_SERVER_NAME="127.0.0.1",
        FETCH_MODELS="0",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
    )
    return env


def urls(env: dict[str, str]) -> dict[str, str]:
    """Each program's readiness URL."""
    return {
        "llm": f"http://127.0.0.1:{env['LLM_PORT']}/v1/health/ready",
        "trellis": f"http://127.0.0.1:{env['TRELLIS_PORT']}/v1/health/ready",
        "ui": f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/",
    }


def app_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}"


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process from the repository root with its output in `log`; terminated (killed if it lingers) after."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def started(env: dict[str, str], log: Path) -> Iterator[dict[str, float]]:
    """start.sh in the foreground, as the container runs it; yields seconds-to-ready per program."""
    import httpx

    with running(["bash", "start.sh"], env, log) as proc:
        t0 = time.perf_counter()
        ready: dict[str, float] = {}
        while len(ready) < len(PROGRAMS):
            if proc.poll() is not None:
                raise RuntimeError(f"start.sh exited {proc.returncode}; see {log}")
            if time.perf_counter() - t0 > READY_TIMEOUT_S:
                raise TimeoutError(f"not ready after {READY_TIMEOUT_S:g}s: {sorted(set(PROGRAMS) - set(ready))}")
            for name, url in urls(env).items():
                if name not in ready and _answers(httpx, url):
                    ready[name] = round(time.perf_counter() - t0, 1)
            time.sleep(0.5)
        yield ready


def _answers(httpx: Any, url: str) -> bool:
    try:
        return httpx.get(url, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False
