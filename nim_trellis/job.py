"""What a job is, apart from the queue that runs it: its record (`Job`), what its work function is handed
(`JobContext`: stages, progress, cancel and deadline checks), its leaner retry after CUDA out-of-memory
(`LeanRetry`), the exceptions that end it, and the status a client reads (`status_of`). The queue itself is
`jobs.JobQueue`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nim_trellis.job_store import JobRecord
from nim_trellis.protocol import JobState, JobStatus

if TYPE_CHECKING:
    from nim_trellis.jobs import JobQueue

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "filtered"})


class JobCancelled(Exception):
    """Raised at a stage boundary after a cancel request."""


class JobTimedOut(Exception):
    """Raised at a stage boundary after the job's deadline."""


class SafetyRefused(Exception):
    """A safety classifier decided against the input; the job ends as `filtered`."""


class OutOfGpuMemory(Exception):
    """CUDA ran out of memory, also in the job's leaner retry; the message says which profile to choose."""


class StorageFailed(Exception):
    """The job's result could not be saved; the message says where and why (read-only, full disk...)."""


@dataclass(frozen=True)
class LeanRetry:
    """A job's leaner variant, run once after CUDA out-of-memory; `what` says in words how it is leaner."""

    what: str
    work: Callable[[JobContext], Any]


@dataclass
class Job:
    id: str
    kind: str  # "3d" or "images"
    work: Callable[[JobContext], Any]
    backend: str
    output_format: str = ""
    seed: int | None = None
    status: JobState = "queued"
    stage: str | None = None
    progress: float = 0.0
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result_path: Path | None = None
    media_type: str | None = None
    value: Any = None  # in-memory result (generated images)
    cancel_requested: bool = False
    discard_when_done: bool = False  # nobody will collect the result (its client left)
    done: Future[None] = field(default_factory=Future)
    lean: LeanRetry | None = None
    note: str | None = None  # how the result differs from what was asked (e.g. the leaner retry's reason)
    error_code: str | None = None
    in_memory: bool = False  # keep a MeshArtifact in `value` instead of writing it under results_dir
    durable: bool = False  # its record is kept in the job store (a job clients poll by id)
    params: dict[str, Any] | None = None  # what was asked, kept with the record

    def record(self) -> JobRecord:
        result = str(self.result_path) if self.result_path else None
        return JobRecord(
            id=self.id,
            kind=self.kind,
            backend=self.backend,
            output_format=self.output_format,
            seed=self.seed,
            status=self.status,
            stage=self.stage,
            progress=self.progress,
            error=self.error,
            error_code=self.error_code,
            note=self.note,
            created=self.created,
            started=self.started,
            finished=self.finished,
            result_path=result,
            media_type=self.media_type,
            params=self.params,
        )

    @classmethod
    def of(cls, r: JobRecord) -> Job:
        """A job read back from the store: its status and result, no work to run."""
        job = cls(id=r.id, kind=r.kind, work=_gone, backend=r.backend, output_format=r.output_format, seed=r.seed)
        job.status, job.stage, job.progress = r.status, r.stage, r.progress  # type: ignore[assignment]
        job.error, job.error_code, job.note = r.error, r.error_code, r.note
        job.created, job.started, job.finished = r.created, r.started, r.finished
        job.result_path = Path(r.result_path) if r.result_path else None
        job.media_type, job.params, job.durable = r.media_type, r.params, True
        job.done.set_result(None)
        return job


def status_of(r: JobRecord, queue_position: int | None) -> JobStatus:
    """What `GET /v1/jobs/{id}` answers for a job record, wherever the job runs."""
    return JobStatus(
        id=r.id,
        status=r.status,  # type: ignore[arg-type]
        stage=r.stage,
        progress=round(r.progress, 4),
        queue_position=queue_position,
        error=r.error,
        error_code=r.error_code,
        seed=r.seed,
        backend=r.backend,
        output_format=r.output_format,
        created=r.created,
        finished=r.finished,
        note=r.note,
    )


def _gone(ctx: JobContext) -> Any:
    raise AssertionError("a job read back from the store is never run")


class JobContext:
    """Handed to a job's work function: stage reporting, cancel and deadline checks."""

    def __init__(self, job: Job, queue: JobQueue, deadline: float) -> None:
        self.job, self._queue, self._deadline = job, queue, deadline
        self._stage_start = time.monotonic()

    def stage(self, name: str, progress: float) -> None:
        self.close_stage()
        if self._queue.cancel_check is not None and self._queue.cancel_check(self.job):
            self.job.cancel_requested = True  # asked from another process (a worker's job, `workers.py`)
        self._check()
        self.job.stage, self.job.progress = name, max(self.job.progress, min(progress, 1.0))
        self._queue.record(self.job)  # a handful per job; progress within a stage is not written

    def advance(self, progress: float) -> None:
        self._check()
        self.job.progress = max(self.job.progress, min(progress, 1.0))

    def _check(self) -> None:
        if self.job.cancel_requested:
            raise JobCancelled()
        if time.monotonic() > self._deadline or self.job.status != "running":
            raise JobTimedOut()

    def close_stage(self) -> None:
        now = time.monotonic()
        if self.job.stage:
            self._queue.metrics.stage_seconds.labels(self.job.stage).observe(now - self._stage_start)
        self._stage_start = now
