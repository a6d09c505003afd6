"""The real appliance under the real supervisord: ./start.sh with the repository's supervisord.conf, the three real
programs in the `tiny` profile, on free ports, with data, logs and sockets in a temp dir.

The tests of this module share one running appliance and run in order: ready -> a killed 3D service comes back
while the UI keeps answering -> logs -> stopping supervisord leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import PROGRAMS, ROOT, alive, clean_env, descendants, kill_tree, wait_gone
from tests.support import free_port, wait_http

pytestmark = pytest.mark.slow

READY_LIMIT_S = 180  # three programs building tiny models on 2 shared cores


@dataclass
class Appliance:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    tmp: Path
    urls: dict[str, str] = field(default_factory=dict)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(ROOT / "supervisord.conf"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip() or 0)

    def wait_all_ready(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        for url in self.urls.values():
            wait_http(url, timeout_s=max(1.0, deadline - time.monotonic()))


@pytest.fixture(scope="module")
def appliance(ops_cache: Path) -> Iterator[Appliance]:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="c3d-sv-"))  # short: the unix socket path must stay < 108 bytes
    ports = {name: str(free_port()) for name in ("LLM_PORT", "TRELLIS_PORT", "GRADIO_SERVER_PORT")}
    env = clean_env(
        CHAT3D_PROFILE="tiny",
        CHAT3D_PYTHON=sys.executable,
        DATA_DIR=str(tmp / "data"),
        LOG_DIR=str(tmp / "logs"),
        RUN_DIR=str(tmp / "run"),
        CACHE_DIR=str(ops_cache),
        **ports,
    )
    out = (tmp / "start.out").open("wb")
    process = subprocess.Popen(
        ["./start.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    app = Appliance(
        process,
        env,
        tmp,
        {
            "llm-service": f"http://127.0.0.1:{ports['LLM_PORT']}/v1/health/ready",
            "trellis-service": f"http://127.0.0.1:{ports['TRELLIS_PORT']}/v1/health/ready",
            "gradio-app": f"http://127.0.0.1:{ports['GRADIO_SERVER_PORT']}/",
        },
    )
    try:
        yield app
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
            process.wait(timeout=30)
        out.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_all_programs_reach_running_and_ready(appliance: Appliance) -> None:
    try:
        appliance.wait_all_ready(READY_LIMIT_S)
    except TimeoutError:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((appliance.tmp / "logs").glob("*")))
        pytest.fail(f"not ready within {READY_LIMIT_S}s\n{logs}")
    status = appliance.ctl("status")
    assert status.returncode == 0, status.stdout
    states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()}
    assert states == dict.fromkeys([*PROGRAMS, "log-stream"], "RUNNING")
    assert appliance.process.poll() is None, "start.sh must exec supervisord in the foreground"
    health = subprocess.run(
        [sys.executable, "scripts/healthcheck.py"],
        cwd=ROOT,
        env=appliance.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 0, health.stdout + health.stderr  # the Docker HEALTHCHECK's verdict


def test_killed_3d_service_comes_back_while_ui_answers(appliance: Appliance) -> None:
    ui_codes: list[int | str] = []
    stop = threading.Event()

    def poll_ui() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    ui_codes.append(client.get(appliance.urls["gradio-app"]).status_code)
                except httpx.HTTPError as err:
                    ui_codes.append(repr(err))
                stop.wait(0.5)

    old = appliance.pid("trellis-service")
    assert old > 0
    poller = threading.Thread(target=poll_ui, daemon=True)
    poller.start()
    try:
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while appliance.pid("trellis-service") in (0, old):
            assert time.monotonic() < deadline, "supervisord did not restart the 3D service"
            time.sleep(0.2)
        wait_http(appliance.urls["trellis-service"], timeout_s=READY_LIMIT_S)
    finally:
        stop.set()
        poller.join(timeout=15)
    assert not alive(old)
    assert ui_codes and set(ui_codes) == {200}, f"the UI stopped answering: {ui_codes}"
    assert "RUNNING" in appliance.ctl("status", "trellis-service").stdout


def test_each_program_logs_to_its_files_and_to_stdout(appliance: Appliance) -> None:
    logs = appliance.tmp / "logs"
    for program in PROGRAMS:
        assert (logs / f"{program}.out.log").exists() and (logs / f"{program}.err.log").exists()
    assert "exited: trellis-service (terminated by SIGKILL" in (logs / "supervisord.log").read_text()
    assert any((logs / f"{p}.err.log").stat().st_size + (logs / f"{p}.out.log").stat().st_size for p in PROGRAMS)
    streamed = (appliance.tmp / "start.out").read_text(errors="replace")
    assert "start.sh: starting supervisord" in streamed
    assert f"==> {logs}/" in streamed, "log-stream copies the program logs to stdout"


def test_stopping_supervisord_stops_every_child(appliance: Appliance) -> None:
    tree = descendants(appliance.process.pid)
    program_pids = {appliance.pid(p) for p in [*PROGRAMS, "log-stream"]}
    assert program_pids <= tree and len(tree) >= 4
    appliance.process.send_signal(signal.SIGTERM)
    assert appliance.process.wait(timeout=90) == 0
    left = wait_gone(tree, timeout_s=10)
    assert not left, f"processes outlived supervisord: {left}"
    assert not (appliance.tmp / "run" / "supervisor.sock").exists()
