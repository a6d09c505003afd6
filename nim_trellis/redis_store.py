"""The 3D job queue in Redis (JOB_QUEUE_URL=redis://...): API processes and GPU workers on any number of hosts.

Why `redis-py` primitives and not a job library (RQ, arq, Celery, dramatiq): those libraries own the worker loop.
RQ forks a work horse per job (the model would load per job; its no-fork `SimpleWorker` has no cancel, since
`send_stop_job_command` kills the horse), arq's and dramatiq's workers are async or thread pools around plain
functions, and Celery brings its own supervision. Our worker is already a supervised process with its model loaded
once, a VRAM lease, a per-stage cancel check, a timeout watchdog and an out-of-memory retry (`JobQueue.run_claimed`);
what it lacks on several hosts is only a shared place for records, the queue and heartbeats. That is six Redis
structures and four short Lua scripts (each atomic in Redis), the same `QueueStore` contract as the SQLite file,
so `WorkerPool` and `nim_trellis.worker` run unchanged on either.

Layout (prefix `trellis:`):
- `job:<id>`: a hash, one field per `JobRecord` column plus `worker`, `heartbeat`, `cancel_requested`. A finished
  job's hash expires after JOB_RETENTION_S, so Redis does not grow even with no API process running.
- `queue`: a list of queued ids, oldest first. `claim` pops and marks running in one script, so two workers never
  take one job, and a cancel of a queued job can never race a claim.
- `running`: the ids being run, which API processes scan for jobs whose worker's heartbeat stopped.
- `finished`: a sorted set (id by finish time), to remove expired result files from the shared volume.
- `workers` and `worker:<name>`: each worker's health; its hash expires TRELLIS_WORKER_STALE_S after its last
  heartbeat, so a worker killed on another host drops out of `/v1/health/ready` without anyone cleaning up.

Inputs and results are not in Redis: a GLB is megabytes and an input image too, and Redis keeps everything in
memory. They stay files under DATA_DIR/jobs/<id>/, which API processes and workers share (NFS or any shared
volume); the record holds the path.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from nim_trellis.job_store import COLUMNS, JobRecord
from nim_trellis.protocol import WorkerHealth

PREFIX = "trellis:"
QUEUE, RUNNING, FINISHED, WORKERS = (PREFIX + k for k in ("queue", "running", "finished", "workers"))
JOB_PREFIX, WORKER_PREFIX = PREFIX + "job:", PREFIX + "worker:"
TERMINAL = ("succeeded", "failed", "cancelled", "filtered")
FLOATS = {"progress", "created", "started", "finished"}

# KEYS: queue, running; ARGV: now, worker, job key prefix. The oldest queued job, marked running, as field pairs.
CLAIM = """
local id = redis.call('LPOP', KEYS[1])
while id do
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'status', 'running', 'started', ARGV[1], 'worker', ARGV[2], 'heartbeat', ARGV[1])
    redis.call('SADD', KEYS[2], id)
    return redis.call('HGETALL', key)
  end
  id = redis.call('LPOP', KEYS[1])
end
return false
"""
# KEYS: job, queue, running, finished; ARGV: id, now, ttl, status, error, error_code, then the states it may leave.
FINISH_IF = """
local status = redis.call('HGET', KEYS[1], 'status')
for i = 7, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[4], 'error', ARGV[5], 'error_code', ARGV[6], 'finished', ARGV[2])
    redis.call('LREM', KEYS[2], 0, ARGV[1])
    redis.call('SREM', KEYS[3], ARGV[1])
    redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return 1
  end
end
return 0
"""
# KEYS: job. Sets cancel_requested only while the job runs.
REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  return redis.call('HSET', KEYS[1], 'cancel_requested', 1)
end
return 0
"""
# KEYS: job; ARGV: now, progress. A heartbeat only for a job still running (never revives a finished hash).
BEAT_JOB = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  return redis.call('HSET', KEYS[1], 'heartbeat', ARGV[1], 'progress', ARGV[2])
end
return 0
"""


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def to_record(fields: dict[str, str]) -> JobRecord:
    """A record from its hash; missing fields are None."""
    values: dict[str, Any] = {c: fields.get(c) for c in COLUMNS}
    for name in FLOATS:
        values[name] = float(values[name]) if values[name] is not None else None
    values["seed"] = int(values["seed"]) if values["seed"] is not None else None
    values["params"] = json.loads(values["params"]) if values["params"] else None
    return JobRecord(**values)


def to_fields(record: JobRecord) -> tuple[dict[str, str | int | float], list[str]]:
    """The record's hash fields, and the names of its None columns (to remove)."""
    fields: dict[str, str | int | float] = {}
    empty = []
    for name in COLUMNS:
        value = getattr(record, name)
        if value is None:
            empty.append(name)
        else:
            fields[name] = json.dumps(value) if name == "params" else value
    return fields, empty


class RedisJobStore:
    """`QueueStore` on one Redis database; safe from any thread (redis-py's client is a connection pool)."""

    def __init__(self, url: str, *, retention_s: float, worker_ttl_s: float) -> None:
        self.url, self.retention_s, self.worker_ttl_s = url, retention_s, worker_ttl_s
        self._r = redis.Redis.from_url(url, decode_responses=True)
        self._claim = self._r.register_script(CLAIM)
        self._finish_if = self._r.register_script(FINISH_IF)
        self._request_cancel = self._r.register_script(REQUEST_CANCEL)
        self._beat_job = self._r.register_script(BEAT_JOB)
        self._reported: dict[str, tuple[WorkerHealth, dict[str, Any] | None]] = {}  # this process's workers

    # --- jobs ----------------------------------------------------------------------------------------------
    def put(self, record: JobRecord) -> None:
        """Write the record's columns (worker, heartbeat and cancel flag stay); a finished one starts to expire."""
        fields, empty = to_fields(record)
        key = job_key(record.id)
        with self._r.pipeline() as p:
            p.hset(key, mapping=fields)
            if empty:
                p.hdel(key, *empty)
            if record.status in TERMINAL:
                p.srem(RUNNING, record.id)
                p.zadd(FINISHED, {record.id: record.finished or 0.0})
                p.expire(key, self._ttl())
            p.execute()

    def enqueue(self, record: JobRecord) -> None:
        fields, _ = to_fields(record)
        with self._r.pipeline() as p:  # MULTI/EXEC: a worker never pops an id whose hash is not there yet
            p.hset(job_key(record.id), mapping=fields)
            p.rpush(QUEUE, record.id)
            p.execute()

    def get(self, job_id: str) -> JobRecord | None:
        fields = self._r.hgetall(job_key(job_id))
        return to_record(fields) if fields else None

    def claim(self, worker: str, now: float) -> JobRecord | None:
        pairs = self._claim(keys=[QUEUE, RUNNING], args=[now, worker, JOB_PREFIX])
        return to_record(dict(zip(pairs[::2], pairs[1::2], strict=True))) if pairs else None

    def delete(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self._r.pipeline() as p:
            p.delete(*(job_key(i) for i in job_ids))
            p.zrem(FINISHED, *job_ids)
            p.srem(RUNNING, *job_ids)
            for job_id in job_ids:
                p.lrem(QUEUE, 0, job_id)
            p.execute()

    def fail_unfinished(self, job_id: str, error: str, now: float) -> None:
        self._finish(job_id, now, "failed", error, "interrupted", ("queued", "running"))

    def cancel_queued(self, job_id: str, now: float) -> None:
        self._finish(job_id, now, "cancelled", "cancelled before it started", "cancelled", ("queued",))

    def _finish(self, job_id: str, now: float, status: str, error: str, code: str, was: tuple[str, ...]) -> None:
        keys = [job_key(job_id), QUEUE, RUNNING, FINISHED]
        self._finish_if(keys=keys, args=[job_id, now, self._ttl(), status, error, code, *was])

    def request_cancel(self, job_id: str) -> None:
        self._request_cancel(keys=[job_key(job_id)])

    def cancel_requested(self, job_id: str) -> bool:
        return self._r.hget(job_key(job_id), "cancel_requested") == "1"

    def beat_job(self, job_id: str, now: float, progress: float) -> None:
        self._beat_job(keys=[job_key(job_id)], args=[now, progress])

    def running(self) -> list[str]:
        return sorted(self._r.smembers(RUNNING))

    def held_by(self, worker: str) -> list[str]:
        return [i for i in self.running() if self._r.hget(job_key(i), "worker") == worker]

    def stale_running(self, cutoff: float) -> list[str]:
        stale = []
        for job_id in self.running():
            status, beat = self._r.hmget(job_key(job_id), ["status", "heartbeat"])
            if status != "running":  # finished meanwhile, or expired: no longer running
                self._r.srem(RUNNING, job_id)
            elif beat is None or float(beat) < cutoff:
                stale.append(job_id)
        return stale

    def worker_of(self, job_id: str) -> str | None:
        return self._r.hget(job_key(job_id), "worker")

    def depth(self) -> int:
        return int(self._r.llen(QUEUE))

    def queue_position(self, record: JobRecord) -> int:
        index = self._r.lpos(QUEUE, record.id)
        return int(index) + 1 if index is not None else 1  # claimed this instant: it is next, or running

    def finished_before(self, cutoff: float) -> list[str]:
        return list(self._r.zrangebyscore(FINISHED, "-inf", cutoff))

    def _ttl(self) -> int:
        return max(1, round(self.retention_s))

    # --- workers -------------------------------------------------------------------------------------------
    def report_worker(self, worker: WorkerHealth, caps: dict[str, Any] | None, now: float) -> None:
        fields = {**worker.model_dump(exclude_none=True), "heartbeat": now}
        if caps is not None:
            fields["capabilities"] = json.dumps(caps)
        key = WORKER_PREFIX + worker.name
        self._reported[worker.name] = (worker, caps)
        with self._r.pipeline() as p:
            p.hset(key, mapping=fields)
            p.expire(key, self._worker_ttl())
            p.sadd(WORKERS, worker.name)
            p.execute()

    def beat_worker(self, name: str, now: float) -> None:
        key = WORKER_PREFIX + name
        if self._r.expire(key, self._worker_ttl()):  # it exists, and cannot expire before the next line
            self._r.hset(key, "heartbeat", now)
        elif name in self._reported:  # expired while the worker was stalled: report it whole again
            self.report_worker(*self._reported[name], now)

    def worker_heartbeat(self, name: str) -> float | None:
        beat = self._r.hget(WORKER_PREFIX + name, "heartbeat")
        return float(beat) if beat is not None else None

    def workers(self) -> list[WorkerHealth]:
        found = []
        for name in sorted(self._r.smembers(WORKERS)):
            fields = self._r.hgetall(WORKER_PREFIX + name)
            if not fields:  # expired: the worker stopped beating (gone, or its host is)
                self._r.srem(WORKERS, name)
                continue
            found.append(WorkerHealth.model_validate({k: fields[k] for k in WorkerHealth.model_fields if k in fields}))
        return found

    def ready_capabilities(self) -> dict[str, Any]:
        for worker in self.workers():
            caps = self._r.hget(WORKER_PREFIX + worker.name, "capabilities")
            if worker.state == "ready" and caps:
                return dict(json.loads(caps))
        return {}

    def forget_worker(self, name: str) -> None:
        self._r.delete(WORKER_PREFIX + name)
        self._r.srem(WORKERS, name)

    def forget_workers(self) -> None:
        for name in self._r.smembers(WORKERS):
            self.forget_worker(name)

    def _worker_ttl(self) -> int:
        return max(1, round(self.worker_ttl_s))

    def close(self) -> None:
        self._r.close()
