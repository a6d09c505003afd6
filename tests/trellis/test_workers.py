"""Several 3D worker processes on one queue (TRELLIS_WORKERS=2): the real service (`tiny` profile, relief backend
on the CPU) as its own process with its real worker processes. Jobs spread over both workers; a worker killed
with `kill -9` fails its job as `interrupted` while the other keeps serving; a restarted service still answers
every job; a cancel reaches a job running in a worker process."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nim_trellis.job_store import JobStore
from tests.studio.live import base_env, process, wait_ready
from tests.support import free_port
from tests.trellis.conftest import wait_job
from tests.trellis.test_durable_jobs import object_png
from tests.trellis.worker_jobs import FINISHED, JOB_WAIT_S, cancel_mid_job, frozen_mid_job, submit

pytestmark = pytest.mark.slow
WORKERS = 2
CANCEL_ATTEMPTS = 5


def ready_workers(url: str) -> list[dict[str, Any]]:
    """Wait until every worker has loaded its backend; their health entries."""
    deadline = time.monotonic() + JOB_WAIT_S
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workers = httpx.get(f"{url}/v1/health/ready", timeout=10).json().get("workers") or []
        if len(workers) == WORKERS and all(w["state"] == "ready" for w in workers):
            return workers
        time.sleep(0.1)
    raise TimeoutError(f"workers never all ready: {workers}")


def holder(data_dir: Path, job_id: str) -> str | None:
    """The worker running the job, as the store says (the HTTP API does not tell)."""
    store = JobStore(data_dir / "jobs" / "jobs.sqlite3")
    try:
        rows = store.execute("SELECT worker FROM jobs WHERE id = ? AND status = 'running'", (job_id,))
        return str(rows[0][0]) if rows else None
    finally:
        store.close()


def test_two_workers_share_the_queue_survive_a_kill_and_a_restart(tmp_path: Path) -> None:
    data_dir, cache_dir, port = tmp_path / "data", tmp_path / "cache", free_port()
    env = {**base_env(data_dir, cache_dir), "TRELLIS_PORT": str(port), "TRELLIS_WORKERS": str(WORKERS)}
    url = f"http://127.0.0.1:{port}"
    image = "data:image/png;base64," + base64.b64encode(object_png()).decode()
    args = ["-m", "nim_trellis.run_trellis_local"]

    with process(args, env, tmp_path / "first.log") as first:
        wait_ready(f"{url}/v1/health/ready", first, tmp_path / "first.log")
        workers = ready_workers(url)
        assert {w["device"] for w in workers} == {"cpu"} and len({w["pid"] for w in workers}) == WORKERS

        # Jobs spread over both workers.
        batch = [submit(url, image) for _ in range(4 * WORKERS)]
        done = [wait_job(url, j, FINISHED, timeout_s=JOB_WAIT_S) for j in batch]
        assert all(d["status"] == "succeeded" for d in done), done
        result = httpx.get(f"{url}/v1/jobs/{batch[0]}/result", timeout=30)
        assert result.status_code == 200 and result.content[:4] == b"glTF"
        assert ran_on(data_dir, batch) == {w["name"] for w in workers}

        # kill -9 one worker mid-job (frozen first, so the job is surely still its own): the job fails as
        # interrupted, the other worker keeps serving, and the service starts the killed one again.
        pids = {w["name"]: w["pid"] for w in ready_workers(url)}
        victim_job, victim = frozen_mid_job(url, image, pids, lambda job: holder(data_dir, job))
        os.kill(pids[victim], signal.SIGKILL)
        failed = wait_job(url, victim_job, FINISHED, timeout_s=JOB_WAIT_S)
        assert failed["status"] == "failed" and failed["error_code"] == "interrupted", failed
        assert "submit it again" in failed["error"]
        after = submit(url, image)
        assert wait_job(url, after, FINISHED, timeout_s=JOB_WAIT_S)["status"] == "succeeded"
        restarted = {w["name"]: w["pid"] for w in ready_workers(url)}
        assert restarted[victim] != pids[victim]

        # A cancel reaches a job running in another process.
        outcomes = cancel_mid_job(url, image, restarted, lambda job: holder(data_dir, job), CANCEL_ATTEMPTS)
        to_cancel = outcomes[-1]["id"]
        assert outcomes[-1]["status"] == "cancelled", outcomes
        assert all(o["status"] in {"succeeded", "cancelled"} for o in outcomes), outcomes

        # Jobs waiting when the service is killed stay queued and run after the restart.
        waiting = [submit(url, image) for _ in range(3 * WORKERS)]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    with process(args, env, tmp_path / "second.log") as second:
        wait_ready(f"{url}/v1/health/ready", second, tmp_path / "second.log")
        for job_id in [batch[0], victim_job, to_cancel]:
            assert httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()["status"] in FINISHED
        assert httpx.get(f"{url}/v1/jobs/{batch[0]}/result", timeout=30).content[:4] == b"glTF"
        outcomes = [wait_job(url, j, FINISHED, timeout_s=JOB_WAIT_S) for j in waiting]
        assert all(o["status"] in FINISHED for o in outcomes)
        assert [o for o in outcomes if o["status"] == "succeeded"], outcomes  # queued ones ran after the restart
        for o in outcomes:
            assert o["status"] == "succeeded" or o["error_code"] == "interrupted", o


def ran_on(data_dir: Path, job_ids: list[str]) -> set[str]:
    store = JobStore(data_dir / "jobs" / "jobs.sqlite3")
    try:
        return {str(store.execute("SELECT worker FROM jobs WHERE id = ?", (j,))[0][0]) for j in job_ids}
    finally:
        store.close()
