"""One 3D worker process per GPU (TRELLIS_WORKERS > 1), all draining one durable queue: the API process's side.

With TRELLIS_WORKERS=1 (the default) nothing here runs: `JobQueue`'s one thread does 3D work inside the service.
With `auto` (one per visible GPU) or N, the service process no longer runs 3D jobs itself. `POST /v1/jobs` (and
`/v1/infer`, which then waits on its job) writes the decoded input image to `DATA_DIR/jobs/<id>/input.png` and a
`queued` row to the job store; N processes (`python -m nim_trellis.worker`, see there), each pinned to one GPU
with CUDA_VISIBLE_DEVICES, claim rows atomically and run them with the same stages, cancel checks, timeout and
out-of-memory retry as the in-process worker. The API answers status, result and cancel from the store; a cancel
of a running job sets `cancel_requested`, which its worker reads at the next stage boundary. Image generation and
moderation stay in the service process (`JobQueue`): they answer within their request.

Why processes and SQLite rather than threads or a broker: one process per GPU keeps each CUDA context, model copy
and VRAM plan (`servicekit/vram.py`) on its own device, and a crash there cannot take the API down; the store is
already there for durability, and a claim is one statement (`JobStore.claim`), so no broker is needed on one host.

Supervision, here in `WorkerPool`: a worker that exits (a crash, `kill -9`) or stops its heartbeat for
TRELLIS_WORKER_STALE_S is (killed and) started again, and the job it held fails with `error_code` `interrupted`.
It is not retried: a job that kills its worker (host out of memory, a driver fault) would take every worker down in
turn; the client resubmits, as after a restart. On start, jobs still `running` from a previous service process are
failed the same way; `queued` ones stay queued and run, since their input is on disk. Workers exit when the
service process is gone (they watch their parent), so a new service never shares a GPU with an orphan.

With JOB_QUEUE_URL=redis://... the queue is `redis_store.RedisJobStore` instead of the SQLite file, behind the same
`queue_store.QueueStore` contract, and this process starts no workers: they run on any host
(`python -m nim_trellis.worker --queue-url ...`) under their own supervisor. Health lists the workers connected
now; a job whose worker's heartbeat is TRELLIS_WORKER_STALE_S old is failed as `interrupted` by any API process
(`_reap`), and a restarted API process fails nothing: its jobs run on in the workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from config import Settings
from nim_trellis.backends.base import Capability
from nim_trellis.errors import job_not_found
from nim_trellis.job import TERMINAL, status_of
from nim_trellis.job_store import JobRecord
from nim_trellis.protocol import BackendHealth, JobStatus, Task3D, WorkerHealth
from nim_trellis.queue_store import QueueStore, open_queue_store
from servicekit.errors import APIError

log = logging.getLogger("nim_trellis.workers")

INPUT_FILE = "input.png"  # lossless: the worker sees exactly the pixels the API decoded
STOP_WAIT_S = 10.0  # how long a stopping worker may take to exit before it is killed
ROOT = Path(__file__).resolve().parent.parent


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them (none without CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    count = torch.cuda.device_count()
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


def worker_count(setting: str, gpus: int) -> int:
    """TRELLIS_WORKERS as a number: `auto` is one per visible GPU, at least one."""
    return max(1, gpus) if setting == "auto" else int(setting)


def interrupted(was: str, why: str) -> str:
    return f"the 3D {why} while this job was {was}; submit it again"


class WorkerPool:
    """The worker processes, their supervision, and the API's view of the shared queue."""

    def __init__(self, settings: Settings, results_dir: Path, count: int, gpus: list[str]) -> None:
        self.settings, self.results_dir, self.count, self.gpus = settings, results_dir, count, gpus
        # JOB_QUEUE_URL: workers on any host join the queue on their own (`nim_trellis/redis_store.py`); this
        # process starts none, and other API processes share the queue, so none of them owns what is running.
        self.remote = bool(settings.job_queue_url)
        self.store: QueueStore | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # by slot
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="trellis-supervisor", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_queue_store(
            self.settings.job_queue_url,
            self.results_dir,
            retention_s=self.settings.job_retention_s,
            worker_ttl_s=self.settings.trellis_worker_stale_s,
        )
        if self.remote:
            self.purge_expired()
            self._supervisor = threading.Thread(target=self._reap, name="trellis-reaper", daemon=True)
            self._supervisor.start()
            log.info("3D jobs go to the queue at %s, run by workers on any host", self.settings.job_queue_url)
            return
        now = time.time()
        for job_id in self.store.running():  # its worker died with the previous service process
            self._fail(job_id, interrupted("running", "service restarted"), now)
        self.store.forget_workers()
        self.purge_expired()
        for slot in range(self.count):
            self._spawn(slot)
        self._supervisor.start()
        log.info("%d 3D worker processes on %s", self.count, ", ".join(self.gpus) or "the CPU")

    def stop(self) -> None:
        self._stopping.set()
        for proc in self._procs.values():
            proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.store is not None:
            self.store.close()

    def name(self, slot: int) -> str:
        return f"worker{slot}"

    def device(self, slot: int) -> str:
        """The GPU a slot is pinned to (round robin when there are more workers than GPUs), or `cpu`."""
        return self.gpus[slot % len(self.gpus)] if self.gpus else "cpu"

    def _spawn(self, slot: int) -> None:
        env = dict(os.environ)
        args = [sys.executable, "-m", "nim_trellis.worker", "--name", self.name(slot), "--device", self.device(slot)]
        args += ["--parent", str(os.getpid())]
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.device(slot)  # the worker's "cuda" is its own GPU
            args += ["--gpu-index", str(slot % len(self.gpus))]
        self._procs[slot] = subprocess.Popen(args, cwd=ROOT, env=env)

    def _supervise(self) -> None:
        """Restart workers that exited or went silent; fail the job each one held."""
        while not self._stopping.wait(self.settings.trellis_worker_heartbeat_s):
            for slot, proc in list(self._procs.items()):
                name = self.name(slot)
                if self._stopping.is_set():
                    return
                if proc.poll() is None and not self._silent(name):
                    continue
                if proc.poll() is None:
                    log.error("3D %s (pid %d) stopped answering; killing it", name, proc.pid)
                    proc.kill()
                    proc.wait()
                log.error("3D %s (pid %d) exited with %s; restarting it", name, proc.pid, proc.returncode)
                self._release(name)
                self._spawn(slot)

    def _reap(self) -> None:
        """Redis mode: fail jobs whose worker stopped beating (killed, or its host is gone). No process here to
        restart: workers on other hosts are restarted by whatever started them (systemd, compose, Kubernetes).
        Every API process reaps; failing a job is conditional on it still running, so two never clash."""
        while not self._stopping.wait(self.settings.trellis_worker_heartbeat_s):
            assert self.store is not None
            try:
                for job_id in self.store.stale_running(time.time() - self.settings.trellis_worker_stale_s):
                    self._fail(job_id, interrupted("running", "worker running it stopped"), time.time())
            except Exception:  # Redis unreachable for a moment: try again at the next beat
                log.exception("could not check the 3D workers' heartbeats")

    def _silent(self, name: str) -> bool:
        assert self.store is not None
        beat = self.store.worker_heartbeat(name)
        return beat is not None and time.time() - beat > self.settings.trellis_worker_stale_s

    def _release(self, name: str) -> None:
        """Fail the job a dead worker held and forget its state."""
        assert self.store is not None
        for job_id in self.store.held_by(name):
            self._fail(job_id, interrupted("running", "worker running it stopped"), time.time())
        self.store.forget_worker(name)

    def _fail(self, job_id: str, error: str, now: float) -> None:
        assert self.store is not None
        self.store.fail_unfinished(job_id, error, now)
        log.warning("job %s: %s", job_id, error)

    # --- health --------------------------------------------------------------------------------------------
    def workers(self) -> list[WorkerHealth]:
        assert self.store is not None
        if self.remote:  # whoever is connected now
            return self.store.workers()
        known = {w.name: w for w in self.store.workers()}
        return [
            known.get(self.name(s), WorkerHealth(name=self.name(s), device=self.device(s), state="loading"))
            for s in range(self.count)
        ]

    def backend_health(self, backend: str) -> BackendHealth:
        """Ready once one worker has loaded its backend; an error only when every worker failed to."""
        workers = self.workers()
        ready = [w.state for w in workers].count("ready")
        if ready:
            return BackendHealth(state="ready", detail=f"{backend} backend loaded in {ready}/{len(workers)} workers")
        if not workers:  # Redis mode before any worker joined: jobs wait in the queue until one does
            where = self.settings.job_queue_url
            return BackendHealth(state="loading", detail=f"no 3D worker connected to the queue at {where} yet")
        failed = [w for w in workers if w.state == "error"]
        if len(failed) == len(workers):
            return BackendHealth(state="error", detail=failed[0].detail)
        return BackendHealth(state="loading", detail=f"{len(workers)} workers loading {backend}")

    def capabilities(self) -> dict[str, Capability]:
        """What a ready worker's backend can do (they run the same backend and settings)."""
        assert self.store is not None
        caps = self.store.ready_capabilities()
        return {name: Capability(**cap) for name, cap in caps.items()}

    # --- the API's side of the queue -----------------------------------------------------------------------
    def submit(self, task: Task3D, *, backend: str) -> JobRecord:
        """Queue a 3D job: its input on disk, its row `queued`; 429 when TRELLIS_JOBS_QUEUE_SIZE rows wait."""
        assert self.store is not None
        self.purge_expired()
        if self.depth() >= self.settings.jobs_queue_size:
            raise APIError(
                429,
                f"The work queue is full ({self.settings.jobs_queue_size} jobs waiting); retry later.",
                code="queue_full",
                retry_after_s=self.settings.trellis_retry_after_s,
            )
        job_id = uuid.uuid4().hex
        if task.image is not None:
            folder = self.results_dir / job_id
            folder.mkdir(parents=True, exist_ok=True)
            task.image.save(folder / INPUT_FILE)
        p = task.params
        record = JobRecord(
            id=job_id,
            kind="3d",
            backend=backend,
            output_format=p.output_format,
            seed=p.seed,
            status="queued",
            stage=None,
            progress=0.0,
            error=None,
            error_code=None,
            note=None,
            created=time.time(),
            started=None,
            finished=None,
            result_path=None,
            media_type=None,
            params={"mode": task.mode, "prompt": task.prompt, **asdict(p)},
        )
        self.store.enqueue(record)
        return record

    def get(self, job_id: str) -> JobRecord:
        assert self.store is not None
        record = self.store.get(job_id)
        if record is None or self._expired(record):
            raise job_not_found(job_id, self.settings.job_retention_s)
        return record

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once (never one a worker has just claimed), a running one at its next stage."""
        assert self.store is not None
        self.get(job_id)
        self.store.cancel_queued(job_id, time.time())
        self.store.request_cancel(job_id)
        return self.get(job_id)

    async def wait(self, job_id: str, is_disconnected: object = None) -> JobRecord:
        """Poll until the job ends (for `/v1/infer`); a client that leaves cancels it."""
        while True:
            record = await asyncio.to_thread(self.get, job_id)
            if record.status in TERMINAL:
                return record
            if callable(is_disconnected) and await is_disconnected():
                await asyncio.to_thread(self.cancel, job_id)
                raise APIError(499, "The client closed the request.", code="client_closed_request")
            await asyncio.sleep(self.settings.trellis_disconnect_poll_s)

    def discard(self, job_id: str) -> None:
        assert self.store is not None
        self.store.delete([job_id])
        shutil.rmtree(self.results_dir / job_id, ignore_errors=True)

    def depth(self) -> int:
        assert self.store is not None
        return self.store.depth()

    def position(self, record: JobRecord) -> int | None:
        if record.status != "queued":
            return None
        assert self.store is not None
        return self.store.queue_position(record)

    def status(self, r: JobRecord) -> JobStatus:
        return status_of(r, self.position(r))

    def _expired(self, record: JobRecord) -> bool:
        return record.finished is not None and record.finished < time.time() - self.settings.job_retention_s

    def purge_expired(self) -> None:
        assert self.store is not None
        cutoff = time.time() - self.settings.job_retention_s
        gone = self.store.finished_before(cutoff)
        self.store.delete(gone)
        for job_id in gone:
            shutil.rmtree(self.results_dir / job_id, ignore_errors=True)
