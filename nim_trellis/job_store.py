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
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    params TEXT
)
"""
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
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def put(self, record: JobRecord) -> None:
        row = [getattr(record, c) for c in COLUMNS]
        row[COLUMNS.index("params")] = json.dumps(record.params) if record.params is not None else None
        marks = ", ".join("?" for _ in COLUMNS)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({marks})", row)

    def delete(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def all(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created").fetchall()
        records = []
        for row in rows:
            values = dict(zip(COLUMNS, row, strict=True))
            values["params"] = json.loads(values["params"]) if values["params"] else None
            records.append(JobRecord(**values))
        return records

    def close(self) -> None:
        with self._lock:
            self._db.close()
