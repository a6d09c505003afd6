"""install.sh's Docker mode against a stand-in `docker` command (CI has no Docker engine).

The stand-in answers the calls install.sh makes (compose version, info, build, up, ps, inspect, logs) and records
them, so the order of the steps, the checks' messages, the .env handling and the wait for a healthy container that
answers on the published port are all exercised for real; only the containers are imaginary.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, clean_env, run_install_sh

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Stand-in docker CLI for tests: FAKE_DOCKER_BREAK=compose|info|runtime makes that check fail.
echo "$*" >>"$FAKE_DOCKER_LOG"
case "$1 ${2:-}" in
  "compose version") [ "${FAKE_DOCKER_BREAK:-}" != compose ] && echo "Docker Compose version v2.40.3" ;;
  "info --format")
    case "$3" in
      *Runtimes*)
        if [ "${FAKE_DOCKER_BREAK:-}" = runtime ]; then echo '{"runc":{}}'; else echo '{"nvidia":{},"runc":{}}'; fi ;;
      *DockerRootDir*) echo "$FAKE_DOCKER_ROOT" ;;
    esac ;;
  "info ") [ "${FAKE_DOCKER_BREAK:-}" != info ] ;;
  "compose ps") echo c0ffee ;;
  "inspect --format") echo "${FAKE_DOCKER_STATE:-running/healthy}" ;;
  "compose logs") echo "INFO: Application startup complete." ;;
  *) exit 0 ;;
esac
"""


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ui_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@pytest.fixture
def docker_repo(tmp_path: Path) -> Path:
    """install.sh and .env.example in a folder, and a stand-in docker first on PATH."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("install.sh", ".env.example"):
        shutil.copy2(ROOT / name, repo / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    return repo


def run_docker_install(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = clean_env(
        **{"FAKE_DOCKER_LOG": str(repo / "docker.log"), "FAKE_DOCKER_ROOT": str(repo), "MIN_FREE_GB": "0", **env}
    )
    base["PATH"] = f"{repo.parent / 'bin'}:{base['PATH']}"
    return run_install_sh(repo, base, *args, timeout=120)


def calls(repo: Path) -> list[str]:
    return (repo / "docker.log").read_text().splitlines()


def test_docker_mode_builds_starts_and_waits_for_healthy_and_published_port(docker_repo: Path, ui_port: int) -> None:
    out = run_docker_install(docker_repo, PUBLISHED_PORT=str(ui_port))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ready: open http://localhost:{ui_port}/" in out.stdout
    assert "docker compose logs -f chat-to-3d" in out.stdout
    made = [c for c in calls(docker_repo) if c in ("compose build", "compose up -d")]
    assert made == ["compose build", "compose up -d"]
    text = (docker_repo / ".env").read_text()
    assert "CHAT3D_PROFILE=gpu\n" in text and "\nHF_TOKEN=\n" in text, "Docker mode defaults to the gpu profile"

    again = run_docker_install(docker_repo, PUBLISHED_PORT=str(ui_port))
    assert again.returncode == 0 and "keeping the existing .env" in again.stdout
    assert (docker_repo / ".env").read_text() == text


def test_docker_mode_is_picked_only_when_the_nvidia_runtime_is_there(docker_repo: Path) -> None:
    out = run_docker_install(docker_repo, "--no-start", PYTHON="false", FAKE_DOCKER_BREAK="runtime")
    assert "native mode: Docker mode is not available (the NVIDIA runtime is not registered" in out.stdout
    assert "compose build" not in calls(docker_repo)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("compose", "Docker Compose v2 ('docker compose') is missing"),
        ("info", "cannot reach the Docker engine"),
        ("runtime", "NVIDIA Container Toolkit"),
    ],
)
def test_forced_docker_mode_explains_what_is_missing(docker_repo: Path, broken: str, message: str) -> None:
    out = run_docker_install(docker_repo, "--docker", FAKE_DOCKER_BREAK=broken)
    assert out.returncode == 1
    assert message in out.stderr and "./install.sh --native" in out.stderr
    assert not (docker_repo / ".env").exists(), "nothing is written before the checks pass"


def test_docker_mode_refuses_too_little_disk(docker_repo: Path) -> None:
    out = run_docker_install(docker_repo, "--docker", MIN_FREE_GB="100000000")
    assert out.returncode == 1 and "GB free under" in out.stderr and "MIN_FREE_GB" in out.stderr


def test_docker_mode_shows_the_log_when_the_container_dies(docker_repo: Path, ui_port: int) -> None:
    out = run_docker_install(docker_repo, PUBLISHED_PORT=str(ui_port), FAKE_DOCKER_STATE="exited/unhealthy")
    assert out.returncode == 1
    assert "the container is exited/unhealthy" in out.stderr and "Application startup complete" in out.stdout


def test_docker_stop_brings_the_service_down(docker_repo: Path) -> None:
    out = run_docker_install(docker_repo, "--docker", "--stop")
    assert out.returncode == 0 and calls(docker_repo)[-1] == "compose down"
