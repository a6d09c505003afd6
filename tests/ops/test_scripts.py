"""The operations helpers on their own: model fetching plans and offline reports, the readiness check, the
settings export, the kaolin stand-in, and the scripts' fast failure paths (bad profile, no GPU, busy port)."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import config
from scripts import fetch_models, healthcheck
from tests.ops.conftest import ROOT, clean_env, run_install_sh
from tests.support import free_port


def settings(**values: object) -> config.Settings:
    return config.Settings(_env_file=None, **values)  # type: ignore[call-arg]


def run_script(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# --- fetch_models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "kind"),
    [
        ("", "off"),
        ("builtin:tiny-llama", "builtin"),
        ("meta-llama/Llama-3.1-8B-Instruct", "hub"),
        ("/nowhere/model", "missing-local"),
        ("./missing.gguf", "missing-local"),
        (str(ROOT), "local"),
    ],
)
def test_classify_tells_hub_ids_from_builtin_local_and_off(model_id: str, kind: str) -> None:
    assert fetch_models.classify(model_id) == kind


def test_needs_of_gpu_profile_include_trellis_and_gated_llm() -> None:
    needs = {n.setting: n for n in fetch_models.needs(settings(profile="gpu"))}
    assert needs["LLM_MODEL"].model_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert needs["TRELLIS_IMAGE_MODEL"].kind == "hub"
    assert all(n.kind == "hub" for n in needs.values())


def test_needs_of_tiny_profile_download_nothing() -> None:
    assert {n.kind for n in fetch_models.needs(settings(profile="tiny"))} == {"builtin"}


def test_plan_lists_dinov2_only_for_the_trellis_backend() -> None:
    labels = [label for label, _, _ in fetch_models.run(settings(profile="gpu"), plan_only=True)]
    assert any(label.startswith("DINOv2") for label in labels)
    labels = [label for label, _, _ in fetch_models.run(settings(profile="cpu"), plan_only=True)]
    assert not any(label.startswith("DINOv2") for label in labels)


def fake_cached_repo(hf_home: Path, repo_id: str) -> None:
    """The layout huggingface_hub's cache uses for a downloaded snapshot."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_fetch_offline_reports_cached_and_missing_models_plainly(tmp_path: Path) -> None:
    fake_cached_repo(tmp_path, "ezb/NSFW-Prompt-Detector")
    env = clean_env(CHAT3D_PROFILE="cpu", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), LLM_MODEL="/nowhere/llm")
    out = run_script([sys.executable, "scripts/fetch_models.py"], env)
    assert out.returncode == 0, out.stderr
    assert "cannot be reached" in out.stdout
    assert "ok      SAFETY_PROMPT_MODEL=ezb/NSFW-Prompt-Detector: found in cache" in out.stdout
    assert "MISSING SAFETY_IMAGE_MODEL=Falconsai/nsfw_image_detection" in out.stdout
    assert (
        "MISSING LLM_MODEL=/nowhere/llm: local path does not exist -> the LLM service falls back to builtin:smollm2 "
        "(LLM_FALLBACK_MODEL)" in out.stdout
    )
    strict = run_script([sys.executable, "scripts/fetch_models.py", "--strict"], env)
    assert strict.returncode == 1


# --- healthcheck ---------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b'{"status": "loading"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_services() -> Iterator[dict[str, http.server.HTTPServer]]:
    servers = {}
    for name in ("llm", "trellis", "ui"):
        server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
        server.status = 200  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def fake_settings(servers: dict[str, http.server.HTTPServer]) -> config.Settings:
    return settings(
        profile="tiny",
        llm_port=servers["llm"].server_port,
        trellis_port=servers["trellis"].server_port,
        gradio_server_port=servers["ui"].server_port,
        gradio_server_name="0.0.0.0",
    )


def test_healthcheck_passes_only_when_all_three_are_ready(fake_services: dict) -> None:
    s = fake_settings(fake_services)
    assert all(ok for ok, _ in healthcheck.check(s).values())
    fake_services["trellis"].status = 503
    results = healthcheck.check(s)
    assert results["trellis-service"] == (False, '503 {"status": "loading"}')
    assert healthcheck.explain(503, b'{"error": {"message": "Loading  x"}}') == "503 Loading x"
    assert healthcheck.explain(503, b'{"status": "loading", "message": "models are loading"}') == (
        "503 models are loading"
    )
    assert results["llm-service"][0] and results["gradio-app"][0]


def healthcheck_env(fake_services: dict, **extra: str) -> dict[str, str]:
    """The healthcheck's environment, pointed at the fake programs."""
    s = fake_settings(fake_services)
    ports = {"LLM_PORT": s.llm_port, "TRELLIS_PORT": s.trellis_port, "GRADIO_SERVER_PORT": s.gradio_server_port}
    return clean_env(CHAT3D_PROFILE="tiny", **{k: str(v) for k, v in ports.items()}, **extra)


def test_healthcheck_exit_code_and_report_from_the_command_line(fake_services: dict) -> None:
    env = healthcheck_env(fake_services)
    ok = run_script([sys.executable, "scripts/healthcheck.py"], env)
    assert ok.returncode == 0 and ok.stdout.count(": ready") == 4  # three programs and the data dir
    env["TRELLIS_PORT"] = str(free_port())
    down = run_script([sys.executable, "scripts/healthcheck.py", "--wait", "1"], env)
    assert down.returncode == 1
    assert "trellis-service: not answering yet" in down.stdout and "gave up after 1s" in down.stderr


def test_healthcheck_fails_with_the_reason_when_data_dir_cannot_be_written(fake_services: dict, tmp_path: Path) -> None:
    """The container turns unhealthy with the reason, even while every program still answers ready. As root, file
    modes stop nothing; a regular file where DATA_DIR's directory should be stops everyone."""
    blocked = tmp_path / "data"
    blocked.write_text("not a directory")
    env = healthcheck_env(fake_services, DATA_DIR=str(blocked))
    out = run_script([sys.executable, "scripts/healthcheck.py"], env)
    assert out.returncode == 1, out.stdout
    assert f"storage: cannot save: DATA_DIR {blocked}" in out.stdout, out.stdout
    full = run_script(
        [sys.executable, "scripts/healthcheck.py"],
        {**env, "DATA_DIR": str(tmp_path / "ok"), "STORAGE_MIN_FREE_MB": str(10**9)},
    )
    assert full.returncode == 1 and "storage: disk full:" in full.stdout, full.stdout


# --- ops_env -------------------------------------------------------------------------------------------------


def test_ops_env_exports_resolved_paths_and_only_set_library_variables(tmp_path: Path) -> None:
    env = clean_env(CHAT3D_PROFILE="tiny", DATA_DIR=str(tmp_path / "d"), LOG_DIR="relative-logs")
    out = run_script([sys.executable, "scripts/ops_env.py"], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"export DATA_DIR={tmp_path / 'd'}" in lines
    assert f"export LOG_DIR={ROOT / 'relative-logs'}" in lines
    assert "export CHAT3D_PROFILE=tiny" in lines
    assert not any("CUDA_VISIBLE_DEVICES" in line or "HF_HOME" in line for line in lines)
    env.update(CUDA_VISIBLE_DEVICES="1", HF_HUB_OFFLINE="true")
    lines = run_script([sys.executable, "scripts/ops_env.py"], env).stdout.splitlines()
    assert "export CUDA_VISIBLE_DEVICES=1" in lines and "export HF_HUB_OFFLINE=1" in lines


def test_ops_env_sets_the_cuda_allocator_unless_the_user_did(tmp_path: Path) -> None:
    env = clean_env(CHAT3D_PROFILE="tiny", DATA_DIR=str(tmp_path / "d"))
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    lines = run_script([sys.executable, "scripts/ops_env.py"], env).stdout.splitlines()
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in lines
    env["PYTORCH_CUDA_ALLOC_CONF"] = "max_split_size_mb:128"
    lines = run_script([sys.executable, "scripts/ops_env.py"], env).stdout.splitlines()
    assert "export PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128" in lines


def test_ops_env_refuses_invalid_settings_with_a_readable_message() -> None:
    out = run_script([sys.executable, "scripts/ops_env.py"], clean_env(LLM_PORT="not-a-port"))
    assert out.returncode == 2
    assert "LLM_PORT" in out.stderr and "Traceback" not in out.stderr


# --- kaolin stand-in -----------------------------------------------------------------------------------------


def test_kaolin_stub_check_tensor_matches_kaolin_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "docker" / "kaolin_stub"))
    from kaolin.utils.testing import check_tensor

    x = torch.zeros(4, 3)
    assert check_tensor(x, (None, 3)) and check_tensor(x, (4, 3), dtype=torch.float32, device="cpu")
    assert check_tensor(x, (None, 4), throw=False) is False
    with pytest.raises(ValueError):
        check_tensor(x, (4, 3, 1))
    with pytest.raises(TypeError):
        check_tensor(x, dtype=torch.int64)


# --- start.sh and install.sh fast paths -------------------------------------------------------------------------


def start_env(tmp: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        CHAT3D_PYTHON=sys.executable,
        DATA_DIR=str(tmp / "data"),
        LOG_DIR=str(tmp / "logs"),
        CACHE_DIR=str(tmp / "cache"),
        RUN_DIR=str(tmp / "run"),
        FETCH_MODELS="0",
        **extra,
    )


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA GPU")
def test_start_refuses_gpu_profile_without_gpu(short_tmp: Path) -> None:
    out = run_script(["./start.sh"], start_env(short_tmp, CHAT3D_PROFILE="gpu"))
    assert out.returncode == 1
    assert "needs an NVIDIA GPU" in out.stderr and "CHAT3D_PROFILE=cpu" in out.stderr
    assert (short_tmp / "logs" / "llm-service.out.log").exists(), "dirs and log files come first"


def test_start_refuses_a_port_in_use(short_tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_script(
            ["./start.sh"],
            start_env(
                short_tmp,
                CHAT3D_PROFILE="tiny",
                GRADIO_SERVER_PORT=str(port),
                LLM_PORT=str(free_port()),
                TRELLIS_PORT=str(free_port()),
            ),
        )
    assert out.returncode == 1
    assert f"port {port} (GRADIO_SERVER_PORT) is already in use" in out.stderr


def test_start_refuses_invalid_settings(short_tmp: Path) -> None:
    out = run_script(["./start.sh"], start_env(short_tmp, CHAT3D_PROFILE="tiny", UI_AUTH_USER="admin"))
    assert out.returncode == 1
    assert "UI_AUTH_PASSWORD" in out.stderr and "not valid" in out.stderr


def test_start_refuses_an_open_studio_with_an_api_key(short_tmp: Path) -> None:
    """Said before anything starts, not by a UI that supervisord restarts until it gives up."""
    out = run_script(["./start.sh"], start_env(short_tmp, CHAT3D_PROFILE="tiny", API_KEY="k-123456789"))
    assert out.returncode == 1
    assert "API_KEY is set" in out.stderr and "Set UI_AUTH_USER and UI_AUTH_PASSWORD" in out.stderr, out.stderr
    assert "open to anyone" in out.stderr


def test_install_help_and_bad_arguments() -> None:
    ok = run_script(["./install.sh", "--help"], clean_env())
    assert ok.returncode == 0 and "--native" in ok.stdout and "--stop" in ok.stdout
    bad = run_script(["./install.sh", "--bogus"], clean_env())
    assert bad.returncode == 1 and "unknown option" in bad.stderr
    profile = run_script(["./install.sh", "--native", "--profile", "huge"], clean_env())
    assert profile.returncode == 1 and "unknown profile 'huge'" in profile.stderr


def install_gpu_native(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_install_sh(cwd, env, "--native", "--profile", "gpu", timeout=60)


def test_install_writes_env_with_token_from_environment_never_a_placeholder(tmp_path: Path) -> None:
    for name in ("install.sh", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    # PYTHON=false stops the native install right after .env is written: only that step is under test here.
    env = clean_env(PYTHON="false", HF_TOKEN="hf_secret123")
    out = install_gpu_native(tmp_path, env)
    assert "older than Python 3.11" in out.stderr
    assert "hf_secret123" not in out.stdout + out.stderr, "the token is never printed"
    text = (tmp_path / ".env").read_text()
    assert "HF_TOKEN=hf_secret123\n" in text and "CHAT3D_PROFILE=gpu\n" in text
    assert oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"
    (tmp_path / ".env").unlink()
    env.pop("HF_TOKEN")
    out = install_gpu_native(tmp_path, env)
    text = (tmp_path / ".env").read_text()
    assert "\nHF_TOKEN=\n" in text, "a skipped token stays empty"
    assert "HF_TOKEN is empty" in out.stdout


def test_install_asks_for_the_token_in_a_terminal_without_echoing_it(tmp_path: Path) -> None:
    import pty
    import select
    import termios
    import time

    for name in ("install.sh", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = clean_env(PYTHON="false")  # stop right after .env is written: only that step is under test
    pid, fd = pty.fork()
    if pid == 0:  # the child: install.sh with the pty as its terminal
        os.chdir(tmp_path)
        os.execve("./install.sh", ["./install.sh", "--native", "--profile", "gpu"], env)
    seen = b""
    while b"Enter to skip" not in seen:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            os.kill(pid, 9)
            pytest.fail(f"install.sh did not ask for the token: {seen!r}")
        seen += os.read(fd, 1024)
    deadline = time.monotonic() + 30
    while termios.tcgetattr(fd)[3] & termios.ECHO:  # a person types once the prompt is there and echo is off
        assert time.monotonic() < deadline, "install.sh asked for the token with echo still on"
        time.sleep(0.01)
    os.write(fd, b"hf_typed_token\n")
    with contextlib.suppress(OSError):  # EIO once the child has exited
        while chunk := os.read(fd, 1024):
            seen += chunk
    os.waitpid(pid, 0)
    assert b"hf_typed_token" not in seen, "the token must not be echoed"
    assert "HF_TOKEN=hf_typed_token\n" in (tmp_path / ".env").read_text()
