"""The work queue: one worker thread drains a bounded queue of jobs, so the GPU never runs two jobs at once.

Every GPU-bound request goes through here: `/v1/jobs`, the synchronous `/v1/infer` (which waits on its job) and
`/v1/images/generations`. A job is a function of a `JobContext`; it reports stages through `ctx.stage(...)`, which
is where cancel requests and timeouts take effect. A job's exception fails that job only. A watchdog fails a job
that overruns its timeout at once (its waiters get an answer), even if the backend call itself is still running;
the worker then discards that call's result.

CUDA out-of-memory is never fatal: the worker frees memory and runs the job's leaner variant (`Job.lean`, e.g.
no texture, one image at a time) once; if that also runs out, the job fails with a message naming the
VRAM_PROFILE to choose.

Finished jobs and their result files (under `DATA_DIR/jobs/<id>/`) are kept for `JOB_RETENTION_S`; a job whose
result travels in its HTTP answer (`/v1/infer`) keeps it in memory instead (`in_memory`). The records of jobs a
client polls by id (`durable`) are also written to `job_store.JobStore`, so they answer after a restart; one that
was queued or running when the process died is failed as `interrupted`. A result is written to a
temp file and renamed; a write that fails (full or read-only disk) removes what it wrote and fails the job with the
reason (`storage`). A job that did not succeed carries `error_code`: `timeout`, `out_of_memory`, `cancelled`,
`filtered`, `unavailable`, `storage`, `interrupted` or `failed`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nim_trellis.backends.base import MeshArtifact
from nim_trellis.backends.optional_deps import MissingDependency
from nim_trellis.errors import job_not_found
from nim_trellis.job import (
    TERMINAL,
    Job,
    JobCancelled,
    JobContext,
    JobTimedOut,
    LeanRetry,
    OutOfGpuMemory,
    SafetyRefused,
    StorageFailed,
    status_of,
)
from nim_trellis.job_store import JobStore
from nim_trellis.metrics import ServiceMetrics
from nim_trellis.protocol import JobState, JobStatus
from servicekit.errors import APIError
from servicekit.storage import cannot_save
from servicekit.vram import free_gpu_memory, is_cuda_oom

if TYPE_CHECKING:
    from nim_trellis.queue_store import QueueStore

log = logging.getLogger("nim_trellis.jobs")

STORE_FILE = "jobs.sqlite3"  # in the results dir, beside the jobs' folders


class JobQueue:
    """Job store + bounded FIFO + the single worker thread."""

    def __init__(
        self,
        *,
        max_queued: int,
        timeout_s: float,
        retention_s: float,
        results_dir: Path,
        retry_after_s: int,
        oom_advice: str = "choose a smaller VRAM_PROFILE",
    ) -> None:
        self.max_queued, self.timeout_s, self.retention_s = max_queued, timeout_s, retention_s
        self.oom_advice = oom_advice
        self.results_dir, self.retry_after_s = results_dir, retry_after_s
        self.metrics = ServiceMetrics(queue_depth=self.depth)
        self._jobs: dict[str, Job] = {}
        self._store: JobStore | QueueStore | None = None  # opened in start(); None when DATA_DIR cannot hold it
        self._queued: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        # Whether a job's cancel was asked elsewhere, read at each stage boundary (set by a worker process).
        self.cancel_check: Callable[[Job], bool] | None = None
        self._worker = threading.Thread(target=self._run_worker, name="trellis-worker", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self, *, take_back: bool = True) -> None:
        """Start the worker thread; `take_back=False` leaves the job store to its owner (`workers.WorkerPool`,
        whose queued jobs must stay queued rather than be failed as interrupted)."""
        try:  # an unusable disk must not stop the service: readiness and each job say why (servicekit.storage)
            self.results_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_results()
        except OSError as e:
            log.warning("%s", cannot_save(f"job results in {self.results_dir}", e))
        if take_back:
            self._open_store()
        self._worker.start()

    def attach_store(self, store: JobStore | QueueStore) -> None:
        """Record durable jobs in `store`, opened and taken back by someone else (a worker process)."""
        self._store = store

    def _open_store(self) -> None:
        """Open the job store and take back its jobs; without it (a disk that cannot hold it) jobs live in memory
        only, and the storage check already tells readiness why."""
        try:
            self._store = JobStore(self.results_dir / STORE_FILE)
            records = self._store.all()
        except (sqlite3.Error, OSError) as e:
            self._store = None
            log.warning("job records are kept in memory only: %s", e)
            return
        now, cutoff = time.time(), time.time() - self.retention_s
        expired = []
        for r in records:
            job = Job.of(r)
            if job.finished is not None and job.finished < cutoff:
                expired.append(job)
                continue
            if job.status not in TERMINAL:  # its work died with the previous process
                was = job.status
                job.status, job.finished, job.error_code = "failed", now, "interrupted"
                job.error = f"the 3D service restarted while this job was {was}; submit it again"
                self.record(job)
            self._jobs[job.id] = job
        self._store.delete([j.id for j in expired])
        for job in expired:
            self._remove_files(job)
        interrupted = sum(j.error_code == "interrupted" and j.finished == now for j in self._jobs.values())
        log.info("job store %s: %d jobs taken back, %d interrupted", self._store.path, len(self._jobs), interrupted)

    def record(self, job: Job) -> None:
        """Write a durable job's record; a failed write costs only durability, never the job."""
        if not job.durable or self._store is None:
            return
        try:
            self._store.put(job.record())
        except (sqlite3.Error, OSError) as e:
            log.warning("job %s: its record could not be saved: %s", job.id, e)

    def _forget(self, jobs: list[Job]) -> None:
        if self._store is None:
            return
        try:
            self._store.delete([j.id for j in jobs if j.durable])
        except (sqlite3.Error, OSError) as e:
            log.warning("job records could not be removed: %s", e)

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            while self._queued:
                self._finish(self._queued.popleft(), "cancelled", error="service shutting down", code="cancelled")
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=timeout_s)
        if self._store is not None:
            self._store.close()  # a running job's record stays "running": the next start marks it interrupted

    # --- client side ---------------------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        work: Callable[[JobContext], Any],
        *,
        backend: str,
        output_format: str = "",
        seed: int | None = None,
        lean: LeanRetry | None = None,
        in_memory: bool = False,
        durable: bool = False,
        params: dict[str, Any] | None = None,
    ) -> Job:
        self.purge_expired()
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            work=work,
            backend=backend,
            output_format=output_format,
            seed=seed,
            lean=lean,
            in_memory=in_memory,
            durable=durable,
            params=params,
        )
        with self._cond:
            if len(self._queued) >= self.max_queued:
                self.metrics.rejected.labels("queue_full").inc()
                raise APIError(
                    429,
                    f"The work queue is full ({self.max_queued} jobs waiting); retry later.",
                    code="queue_full",
                    retry_after_s=self.retry_after_s,
                )
            self._jobs[job.id] = job
            self.record(job)  # before the worker can see it: a job is durable from the moment it is accepted
            self._queued.append(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        self.purge_expired()
        job = self._jobs.get(job_id)
        if job is None:
            raise job_not_found(job_id, self.retention_s)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._cond:
            if job.status == "queued":
                self._queued.remove(job)
                self._finish(job, "cancelled", error="cancelled before it started", code="cancelled")
            elif job.status == "running":
                job.cancel_requested = True  # honoured at the next stage boundary
        return job

    def abandon(self, job: Job) -> None:
        """The waiting client left: cancel the job (at its next stage boundary if running) and forget it."""
        with self._cond:
            job.discard_when_done = True
            if job.status in TERMINAL:
                self.discard(job)
                return
        self.cancel(job.id)

    def discard(self, job: Job) -> None:
        """Forget a finished job at once (used by `/v1/infer`, whose result travels in the response)."""
        with self._cond:
            self._jobs.pop(job.id, None)
        self._forget([job])
        self._remove_files(job)

    def depth(self) -> int:
        return len(self._queued)

    def position(self, job: Job) -> int | None:
        """1-based place among the waiting jobs; None once the job has left the queue."""
        with self._cond:
            for i, queued in enumerate(self._queued):
                if queued is job:
                    return i + 1
        return None

    def status(self, job: Job) -> JobStatus:
        return status_of(job.record(), self.position(job))

    def purge_expired(self) -> None:
        cutoff = time.time() - self.retention_s
        with self._cond:
            expired = [j for j in self._jobs.values() if j.finished is not None and j.finished < cutoff]
            for job in expired:
                del self._jobs[job.id]
        self._forget(expired)
        for job in expired:
            self._remove_files(job)

    # --- worker side ---------------------------------------------------------------------------------------
    def _run_worker(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queued.popleft()
                job.status, job.started = "running", time.time()
            self.record(job)
            self.run_claimed(job)

    def run_claimed(self, job: Job) -> None:
        """Run a job that is already `running` to its end (this queue's worker, or a worker process's loop)."""
        self.metrics.wait_seconds.observe((job.started or job.created) - job.created)
        self._execute(job)

    def _execute(self, job: Job) -> None:
        ctx = JobContext(job, self, deadline=time.monotonic() + self.timeout_s)
        watchdog = threading.Timer(self.timeout_s, self._expire, args=(job,))
        watchdog.daemon = True
        watchdog.start()
        try:
            outcome = self._run_work(job, ctx)
            ctx.close_stage()
            if job.status != "running":  # the watchdog already failed it; drop the late result
                return
            if isinstance(outcome, MeshArtifact):
                self._keep_artifact(job, outcome)
            else:
                job.value = outcome
            self._finish(job, "succeeded")
        except JobCancelled:
            self._finish(job, "cancelled", error="cancelled while running", code="cancelled")
        except JobTimedOut:
            self._finish(job, "failed", error=self._timeout_message(), code="timeout")
        except SafetyRefused as e:
            self._finish(job, "filtered", error=str(e), code="filtered")
        except OutOfGpuMemory as e:
            log.error("job %s: %s", job.id, e)
            self._finish(job, "failed", error=str(e), code="out_of_memory")
        except StorageFailed as e:
            log.error("job %s: %s", job.id, e)
            self._finish(job, "failed", error=str(e), code="storage")
        except MissingDependency as e:  # a part of the backend that could not be installed or loaded here
            log.error("job %s: %s", job.id, e)
            self._finish(job, "failed", error=str(e), code="unavailable")
        except Exception as e:  # a backend failure fails this job only; the worker keeps going
            log.exception("job %s failed", job.id)
            self._finish(job, "failed", error=f"{type(e).__name__}: {e}", code="failed")
        finally:
            watchdog.cancel()
            self.metrics.job_seconds.labels(job.kind).observe(time.time() - (job.started or job.created))

    def _run_work(self, job: Job, ctx: JobContext) -> Any:
        """The job's work; after CUDA out-of-memory, free memory and run its leaner variant once.

        Memory is freed after leaving each `except` block: until then the traceback keeps the failed call's frames,
        and the tensors they hold, alive.
        """
        try:
            return job.work(ctx)
        except Exception as e:
            if not is_cuda_oom(e):
                raise
        free_gpu_memory()
        if job.lean is None:
            raise OutOfGpuMemory(f"the GPU ran out of memory; {self.oom_advice}")
        log.warning("job %s ran out of GPU memory; retrying once %s", job.id, job.lean.what)
        job.note = f"the GPU ran out of memory; retried {job.lean.what} ({self.oom_advice})"
        self.metrics.oom_retries.labels(job.kind).inc()
        try:
            return job.lean.work(ctx)
        except Exception as e:
            if not is_cuda_oom(e):
                raise
        free_gpu_memory()
        raise OutOfGpuMemory(f"the GPU ran out of memory, also when retried {job.lean.what}; {self.oom_advice}")

    def _expire(self, job: Job) -> None:
        with self._cond:
            if job.status == "running":
                log.error("job %s timed out after %ss", job.id, self.timeout_s)
                self._finish(job, "failed", error=self._timeout_message(), code="timeout")

    def _timeout_message(self) -> str:
        return f"timed out after {self.timeout_s:g}s (JOB_TIMEOUT_S)"

    def _keep_artifact(self, job: Job, artifact: MeshArtifact) -> None:
        job.media_type = artifact.media_type
        job.seed, job.backend, job.output_format = artifact.seed, artifact.backend, artifact.output_format
        if job.in_memory:
            job.value = artifact
        else:
            self._store_artifact(job, artifact)

    def _store_artifact(self, job: Job, artifact: MeshArtifact) -> None:
        folder = self.results_dir / job.id
        path = folder / f"result.{artifact.output_format}"
        tmp = path.with_suffix(".tmp")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(artifact.data)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except OSError as e:
            self._remove_files(job)  # the partial temp file, and the job's folder with it
            raise StorageFailed(cannot_save(f"the result in {self.results_dir}", e)) from e
        finally:
            with contextlib.suppress(OSError):  # gone after the rename; whatever else happened, never left behind
                tmp.unlink(missing_ok=True)
        job.result_path = path

    def _finish(self, job: Job, status: JobState, error: str | None = None, code: str | None = None) -> None:
        with self._cond:
            if job.status in TERMINAL:  # the watchdog or a cancel got there first
                return
            job.status, job.error, job.error_code, job.finished = status, error, code, time.time()
            if status == "succeeded":
                job.progress, job.stage = 1.0, "done"
        self.record(job)
        self.metrics.jobs.labels(job.kind, status).inc()
        with contextlib.suppress(Exception):  # a waiter may have cancelled its future
            job.done.set_result(None)
        if job.discard_when_done:
            self.discard(job)

    def _remove_files(self, job: Job) -> None:
        shutil.rmtree(self.results_dir / job.id, ignore_errors=True)

    def _remove_stale_results(self) -> None:
        """Result folders older than the retention (their records expire with them, or never existed)."""
        cutoff = time.time() - self.retention_s
        for folder in self.results_dir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
