"""The 3D job queue in Redis (JOB_QUEUE_URL): a real `redis-server` started here, the real API process (`tiny`
profile) and two real worker processes (`python -m nim_trellis.worker --queue-url ...`, relief backend on the CPU)
started on their own, as they would be on other hosts. Jobs spread over both workers; a worker killed with
`kill -9` fails its job as `interrupted` while the other keeps serving; a restarted API process answers every job
(and jobs keep running while it is down); a cancel reaches a job running in another process."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nim_trellis.job_store import JobRecord
from nim_trellis.protocol import WorkerHealth
from nim_trellis.redis_store import RedisJobStore
from tests.studio.live import base_env, process, wait_ready
from tests.support import free_port
from tests.trellis.conftest import wait_job
from tests.trellis.test_durable_jobs import object_png
from tests.trellis.worker_jobs import FINISHED, JOB_WAIT_S, cancel_mid_job, frozen_mid_job, submit

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_START_S = 10.0
CANCEL_ATTEMPTS = 5
# The setting under test when a worker is killed: how soon its job is failed. Short, so the test does not wait the
# default 30 s; the stale check itself is the same code whatever the value.
STALE_S = 3.0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throw-away `redis-server` on a free port, nothing saved to disk."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (Debian package redis-server; CI installs it)")
    port = free_port()
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with (tmp_path / "redis.log").open("wb") as log:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + REDIS_START_S
        while not _answers(url):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(tmp_path / 'redis.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def queued(job_id: str) -> JobRecord:
    return JobRecord(job_id, "3d", "relief", "glb", 1, "queued", None, 0.0, None, None, None, time.time(), None,
                     None, None, None, {"mode": "image"})  # fmt: skip


# --- the store's contract ------------------------------------------------------------------------------------
def test_claims_are_exclusive_and_a_cancel_never_takes_a_claimed_job(redis_url: str) -> None:
    store = RedisJobStore(redis_url, retention_s=60, worker_ttl_s=60)
    ids = [f"job{i}" for i in range(40)]
    for job_id in ids:
        store.enqueue(queued(job_id))
    assert store.depth() == len(ids) and store.queue_position(store.get("job3")) == 4  # type: ignore[arg-type]
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def drain(worker: str) -> None:
        while (record := store.claim(worker, time.time())) is not None:
            claimed[worker].append(record.id)

    threads = [threading.Thread(target=drain, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed["a"] + claimed["b"]) == sorted(ids)  # each job once, none lost
    first = claimed["a"][0] if claimed["a"] else claimed["b"][0]
    store.cancel_queued(first, time.time())  # too late: it is running
    store.request_cancel(first)
    record = store.get(first)
    assert record is not None and record.status == "running" and store.cancel_requested(first)


def test_finished_jobs_and_silent_workers_expire(redis_url: str) -> None:
    store = RedisJobStore(redis_url, retention_s=1, worker_ttl_s=1)
    store.enqueue(queued("done"))
    record = store.claim("w", time.time())
    assert record is not None
    record.status, record.finished = "succeeded", time.time()
    store.put(record)
    store.report_worker(WorkerHealth(name="w", device="cpu", pid=1, state="ready", detail="ok"), {}, time.time())
    assert store.running() == [] and [w.name for w in store.workers()] == ["w"]
    assert store.finished_before(time.time() + 1) == ["done"]
    time.sleep(2.2)  # both TTLs are 1 s
    assert store.get("done") is None and store.workers() == []
    store.beat_worker("w", time.time())  # a worker that was only stalled comes back whole
    assert [(w.name, w.state) for w in store.workers()] == [("w", "ready")]


# --- the whole system ----------------------------------------------------------------------------------------
def holder(store: RedisJobStore, job_id: str) -> str | None:
    """The worker running the job, as Redis says (the HTTP API does not tell)."""
    record = store.get(job_id)
    return store.worker_of(job_id) if record is not None and record.status == "running" else None


def ready_workers(url: str, names: set[str]) -> dict[str, int]:
    """Wait until exactly these workers are connected and ready; their pids."""
    deadline = time.monotonic() + JOB_WAIT_S
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workers = httpx.get(f"{url}/v1/health/ready", timeout=10).json().get("workers") or []
        if {w["name"] for w in workers} == names and all(w["state"] == "ready" for w in workers):
            return {w["name"]: w["pid"] for w in workers}
        time.sleep(0.1)
    raise TimeoutError(f"workers never {names} and ready: {workers}")


def test_api_and_workers_share_a_redis_queue_survive_a_kill_and_an_api_restart(tmp_path: Path, redis_url: str) -> None:
    data_dir, cache_dir, port = tmp_path / "data", tmp_path / "cache", free_port()
    env = {
        **base_env(data_dir, cache_dir),
        "TRELLIS_PORT": str(port),
        "JOB_QUEUE_URL": redis_url,
        "TRELLIS_WORKER_STALE_S": str(STALE_S),
    }
    url = f"http://127.0.0.1:{port}"
    image = "data:image/png;base64," + base64.b64encode(object_png()).decode()
    api = ["-m", "nim_trellis.run_trellis_local"]
    store = RedisJobStore(redis_url, retention_s=60, worker_ttl_s=STALE_S)

    def worker(stack: contextlib.ExitStack, name: str) -> None:
        args = ["-m", "nim_trellis.worker", "--queue-url", redis_url, "--name", name]
        stack.enter_context(process(args, env, tmp_path / f"{name}.log"))

    with contextlib.ExitStack() as workers:
        worker(workers, "w0")
        worker(workers, "w1")
        with process(api, env, tmp_path / "api1.log") as first:
            wait_ready(f"{url}/v1/health/ready", first, tmp_path / "api1.log")
            pids = ready_workers(url, {"w0", "w1"})

            # Jobs spread over both workers; the result is on the shared DATA_DIR.
            batch = [submit(url, image) for _ in range(8)]
            done = [wait_job(url, j, FINISHED, timeout_s=JOB_WAIT_S) for j in batch]
            assert all(d["status"] == "succeeded" for d in done), done
            result = httpx.get(f"{url}/v1/jobs/{batch[0]}/result", timeout=30)
            assert result.status_code == 200 and result.content[:4] == b"glTF"
            assert {store.worker_of(j) for j in batch} == {"w0", "w1"}

            # kill -9 one worker mid-job (frozen first, so the job is surely its own): once its heartbeat is
            # TRELLIS_WORKER_STALE_S old the job fails as interrupted; the other worker keeps serving.
            victim_job, victim = frozen_mid_job(url, image, pids, lambda job: holder(store, job))
            os.kill(pids[victim], signal.SIGKILL)
            failed = wait_job(url, victim_job, FINISHED, timeout_s=JOB_WAIT_S)
            assert failed["status"] == "failed" and failed["error_code"] == "interrupted", failed
            assert "submit it again" in failed["error"]
            survivor = ({"w0", "w1"} - {victim}).pop()
            after = submit(url, image)
            assert wait_job(url, after, FINISHED, timeout_s=JOB_WAIT_S)["status"] == "succeeded"
            assert store.worker_of(after) == survivor
            alive = ready_workers(url, {survivor})  # the dead one drops out of health when its entry expires

            # A cancel reaches a job running in another process.
            outcomes = cancel_mid_job(url, image, alive, lambda job: holder(store, job), CANCEL_ATTEMPTS)
            to_cancel = outcomes[-1]["id"]
            assert outcomes[-1]["status"] == "cancelled", outcomes

            # The API process dies with jobs waiting: the workers do not depend on it and keep going.
            waiting = [submit(url, image) for _ in range(6)]
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)

        with process(api, env, tmp_path / "api2.log") as second:
            wait_ready(f"{url}/v1/health/ready", second, tmp_path / "api2.log")
            for job_id, status in [(batch[0], "succeeded"), (victim_job, "failed"), (to_cancel, "cancelled")]:
                assert httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()["status"] == status
            assert httpx.get(f"{url}/v1/jobs/{batch[0]}/result", timeout=30).content[:4] == b"glTF"
            outcomes = [wait_job(url, j, FINISHED, timeout_s=JOB_WAIT_S) for j in waiting]
            assert all(o["status"] == "succeeded" for o in outcomes), outcomes
    store.close()


def test_worker_alone_needs_a_queue_url() -> None:
    """Without JOB_QUEUE_URL a worker belongs to the service that starts it: started alone it says so."""
    env = {k: v for k, v in os.environ.items() if k != "JOB_QUEUE_URL"}
    done = subprocess.run([sys.executable, "-m", "nim_trellis.worker"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "--queue-url" in done.stderr
