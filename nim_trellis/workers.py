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
"""

from __future__ import annotations

import asyncio
import json
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
from nim_trellis.job_store import JobRecord, JobStore
from nim_trellis.jobs import STORE_FILE, TERMINAL
from nim_trellis.protocol import BackendHealth, JobStatus, Task3D, WorkerHealth
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
        self.store: JobStore | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # by slot
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="trellis-supervisor", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.results_dir / STORE_FILE)
        now = time.time()
        for r in self.store.all():
            if r.status == "running":  # its worker died with the previous service process
                self._fail(r.id, interrupted(r.status, "service restarted"), now)
        self.store.execute("DELETE FROM workers")
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

    def _silent(self, name: str) -> bool:
        assert self.store is not None
        rows = self.store.execute("SELECT heartbeat FROM workers WHERE name = ?", (name,))
        return bool(rows) and time.time() - rows[0][0] > self.settings.trellis_worker_stale_s

    def _release(self, name: str) -> None:
        """Fail the job a dead worker held and forget its state."""
        assert self.store is not None
        held = self.store.execute("SELECT id FROM jobs WHERE worker = ? AND status = 'running'", (name,))
        for (job_id,) in held:
            self._fail(job_id, interrupted("running", "worker running it stopped"), time.time())
        self.store.execute("DELETE FROM workers WHERE name = ?", (name,))

    def _fail(self, job_id: str, error: str, now: float) -> None:
        assert self.store is not None
        self.store.execute(
            "UPDATE jobs SET status = 'failed', error = ?, error_code = 'interrupted', finished = ? "
            "WHERE id = ? AND status IN ('queued', 'running')",
            (error, now, job_id),
        )
        log.warning("job %s: %s", job_id, error)

    # --- health --------------------------------------------------------------------------------------------
    def workers(self) -> list[WorkerHealth]:
        assert self.store is not None
        rows = self.store.execute("SELECT name, device, pid, state, detail FROM workers ORDER BY name")
        known = {r[0]: WorkerHealth(name=r[0], device=r[1], pid=r[2], state=r[3], detail=r[4]) for r in rows}
        return [
            known.get(self.name(s), WorkerHealth(name=self.name(s), device=self.device(s), state="loading"))
            for s in range(self.count)
        ]

    def backend_health(self, backend: str) -> BackendHealth:
        """Ready once one worker has loaded its backend; an error only when every worker failed to."""
        states = [w.state for w in self.workers()]
        ready = states.count("ready")
        if ready:
            return BackendHealth(state="ready", detail=f"{backend} backend loaded in {ready}/{self.count} workers")
        failed = [w for w in self.workers() if w.state == "error"]
        if len(failed) == self.count:
            return BackendHealth(state="error", detail=failed[0].detail)
        return BackendHealth(state="loading", detail=f"{self.count} workers loading {backend}")

    def capabilities(self) -> dict[str, Capability]:
        """What a ready worker's backend can do (they run the same backend and settings)."""
        assert self.store is not None
        rows = self.store.execute("SELECT capabilities FROM workers WHERE state = 'ready' LIMIT 1")
        caps = json.loads(rows[0][0]) if rows and rows[0][0] else {}
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
        self.store.put(record)
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
        self.store.execute(
            "UPDATE jobs SET status = 'cancelled', error = 'cancelled before it started', error_code = 'cancelled', "
            "finished = ? WHERE id = ? AND status = 'queued'",
            (time.time(), job_id),
        )
        self.store.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
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
        return int(self.store.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")[0][0])

    def position(self, record: JobRecord) -> int | None:
        if record.status != "queued":
            return None
        assert self.store is not None
        ahead = self.store.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND created < ?", (record.created,)
        )[0][0]
        return int(ahead) + 1

    def status(self, r: JobRecord) -> JobStatus:
        return JobStatus(
            id=r.id,
            status=r.status,  # type: ignore[arg-type]
            stage=r.stage,
            progress=round(r.progress, 4),
            queue_position=self.position(r),
            error=r.error,
            error_code=r.error_code,
            seed=r.seed,
            backend=r.backend,
            output_format=r.output_format,
            created=r.created,
            finished=r.finished,
            note=r.note,
        )

    def _expired(self, record: JobRecord) -> bool:
        return record.finished is not None and record.finished < time.time() - self.settings.job_retention_s

    def purge_expired(self) -> None:
        assert self.store is not None
        cutoff = time.time() - self.settings.job_retention_s
        gone = [i for (i,) in self.store.execute("SELECT id FROM jobs WHERE finished < ?", (cutoff,))]
        self.store.delete(gone)
        for job_id in gone:
            shutil.rmtree(self.results_dir / job_id, ignore_errors=True)
