"""Job records that outlive the process: an embedded SQLite database under DATA_DIR (standard library, no server).

`JobQueue` writes a record when a job is queued, starts, changes stage and finishes; on start it reads the records
back, so a job id answers with its true status after a restart or a `kill -9`, and a finished result stays
downloadable for JOB_RETENTION_S. A job that was queued or running when the process died cannot continue (its
work, the decoded image and the backend call, lived in that process): it is failed with `error_code`
`interrupted` and a message saying so, never left "running". Re-queueing it would need the request's image kept on
disk for every job; the client resubmits instead.

Only jobs a client polls by id are recorded (`POST /v1/jobs`); `/v1/infer` and image jobs answer within their own
HTTP request and die with it. SQLite runs in WAL mode with `synchronous=NORMAL`: a record survives the process
being killed (the power failing may lose the last writes, which only costs a status).

With TRELLIS_WORKERS > 1 the same file is the queue itself, shared by the API process and the worker processes
(`nim_trellis/workers.py`): a job's input is on disk, so a queued job survives a restart and runs afterwards.
Three columns serve that mode only: `worker` (who claimed it), `cancel_requested` (set by the API, read by the
worker at its next stage boundary) and `heartbeat`; the `workers` table holds each worker's state. A claim is one
`UPDATE ... RETURNING` statement, so two workers never take the same job; SQLite's busy timeout makes concurrent
writers wait instead of failing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nim_trellis.protocol import WorkerHealth

log = logging.getLogger("nim_trellis.job_store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    output_format TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    stage TEXT,
    progress REAL NOT NULL,
    error TEXT,
    error_code TEXT,
    note TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    result_path TEXT,
    media_type TEXT,
    params TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    heartbeat REAL
)
"""
WORKERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    capabilities TEXT,
    heartbeat REAL NOT NULL
)
"""
# Columns added after the first release of the store: added to an older file on open.
ADDED_COLUMNS = {
    "worker": "TEXT",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "heartbeat": "REAL",
}
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another process's write; writes take milliseconds
COLUMNS = (
    "id",
    "kind",
    "backend",
    "output_format",
    "seed",
    "status",
    "stage",
    "progress",
    "error",
    "error_code",
    "note",
    "created",
    "started",
    "finished",
    "result_path",
    "media_type",
    "params",
)


@dataclass
class JobRecord:
    """What is kept of a job: everything its status and result need, nothing of its work."""

    id: str
    kind: str
    backend: str
    output_format: str
    seed: int | None
    status: str
    stage: str | None
    progress: float
    error: str | None
    error_code: str | None
    note: str | None
    created: float
    started: float | None
    finished: float | None
    result_path: str | None
    media_type: str | None
    params: dict[str, Any] | None


class JobStore:
    """One SQLite file; every method is safe from any thread (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.execute(WORKERS_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

    def put(self, record: JobRecord) -> None:
        """Insert or update the record's columns; the worker columns of an existing row are left alone."""
        row = [getattr(record, c) for c in COLUMNS]
        row[COLUMNS.index("params")] = json.dumps(record.params) if record.params is not None else None
        marks = ", ".join("?" for _ in COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
        sql = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {updates}"
        with self._lock:
            self._db.execute(sql, row)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, its rows (the queue's own queries, `nim_trellis/workers.py`)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def get(self, job_id: str) -> JobRecord | None:
        rows = self.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return self._records(rows)[0] if rows else None

    def claim(self, worker: str, now: float) -> JobRecord | None:
        """Take the oldest queued job for `worker`, atomically: no other worker can take the same one."""
        rows = self.execute(
            f"UPDATE jobs SET status = 'running', started = ?, worker = ?, heartbeat = ? "
            f"WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created LIMIT 1) "
            f"RETURNING {', '.join(COLUMNS)}",
            (now, worker, now),
        )
        return self._records(rows)[0] if rows else None

    def enqueue(self, record: JobRecord) -> None:
        """Add a `queued` job; the row is the queue entry."""
        self.put(record)

    def fail_unfinished(self, job_id: str, error: str, now: float) -> None:
        """Fail a queued or running job as `interrupted`; a finished one is left as it is."""
        self.execute(
            "UPDATE jobs SET status = 'failed', error = ?, error_code = 'interrupted', finished = ? "
            "WHERE id = ? AND status IN ('queued', 'running')",
            (error, now, job_id),
        )

    def cancel_queued(self, job_id: str, now: float) -> None:
        """Cancel the job if it is still queued (never one a worker has just claimed)."""
        self.execute(
            "UPDATE jobs SET status = 'cancelled', error = 'cancelled before it started', error_code = 'cancelled', "
            "finished = ? WHERE id = ? AND status = 'queued'",
            (now, job_id),
        )

    def request_cancel(self, job_id: str) -> None:
        """Ask the worker running the job to stop it at its next stage boundary."""
        self.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        rows = self.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def beat_job(self, job_id: str, now: float, progress: float) -> None:
        self.execute(
            "UPDATE jobs SET heartbeat = ?, progress = ? WHERE id = ? AND status = 'running'", (now, progress, job_id)
        )

    def running(self) -> list[str]:
        return [i for (i,) in self.execute("SELECT id FROM jobs WHERE status = 'running'")]

    def held_by(self, worker: str) -> list[str]:
        return [i for (i,) in self.execute("SELECT id FROM jobs WHERE worker = ? AND status = 'running'", (worker,))]

    def stale_running(self, cutoff: float) -> list[str]:
        rows = self.execute("SELECT id FROM jobs WHERE status = 'running' AND heartbeat < ?", (cutoff,))
        return [i for (i,) in rows]

    def worker_of(self, job_id: str) -> str | None:
        """The worker that claimed the job (tests and logs; the HTTP API does not tell)."""
        rows = self.execute("SELECT worker FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def depth(self) -> int:
        return int(self.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")[0][0])

    def queue_position(self, record: JobRecord) -> int:
        """1-based place of a queued job."""
        ahead = self.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND created < ?", (record.created,))[0][
            0
        ]
        return int(ahead) + 1

    def finished_before(self, cutoff: float) -> list[str]:
        return [i for (i,) in self.execute("SELECT id FROM jobs WHERE finished < ?", (cutoff,))]

    # --- workers ---------------------------------------------------------------------------------------------
    def report_worker(self, worker: WorkerHealth, caps: dict[str, Any] | None, now: float) -> None:
        self.execute(
            "INSERT OR REPLACE INTO workers (name, device, pid, state, detail, capabilities, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (worker.name, worker.device, worker.pid, worker.state, worker.detail, _json(caps), now),
        )

    def beat_worker(self, name: str, now: float) -> None:
        self.execute("UPDATE workers SET heartbeat = ? WHERE name = ?", (now, name))

    def worker_heartbeat(self, name: str) -> float | None:
        rows = self.execute("SELECT heartbeat FROM workers WHERE name = ?", (name,))
        return float(rows[0][0]) if rows else None

    def workers(self) -> list[WorkerHealth]:
        rows = self.execute("SELECT name, device, pid, state, detail FROM workers ORDER BY name")
        return [WorkerHealth(name=r[0], device=r[1], pid=r[2], state=r[3], detail=r[4]) for r in rows]

    def ready_capabilities(self) -> dict[str, Any]:
        """What a ready worker's backend can do, as it reported it (empty before one is ready)."""
        rows = self.execute("SELECT capabilities FROM workers WHERE state = 'ready' LIMIT 1")
        return json.loads(rows[0][0]) if rows and rows[0][0] else {}

    def forget_worker(self, name: str) -> None:
        self.execute("DELETE FROM workers WHERE name = ?", (name,))

    def forget_workers(self) -> None:
        self.execute("DELETE FROM workers")

    def delete(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def all(self) -> list[JobRecord]:
        return self._records(self.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created"))

    @staticmethod
    def _records(rows: list[tuple[Any, ...]]) -> list[JobRecord]:
        records = []
        for row in rows:
            values = dict(zip(COLUMNS, row, strict=True))
            values["params"] = json.loads(values["params"]) if values["params"] else None
            records.append(JobRecord(**values))
        return records

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value) if value is not None else None
