"""One 3D worker process (TRELLIS_WORKERS > 1), started and supervised by the 3D service (`nim_trellis/workers.py`):
`python -m nim_trellis.worker --name worker0 --device 0 --parent PID [--gpu-index 0]`.

It loads the backend once (on the one GPU CUDA_VISIBLE_DEVICES leaves it), reports its state in the store's
`workers` table, then claims queued jobs one at a time and runs each through `JobQueue.run_claimed`: the same
stages, timeout watchdog, out-of-memory retry, atomic result file and error codes as the in-process worker, its
records written to the shared store. A heartbeat thread marks it alive, copies the running job's progress to the
store; a `cancel_requested` set by the API is read at each stage boundary (and by the heartbeat), and the job ends
there as `cancelled`. It
exits when its parent, the service, is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from config import Settings, get_settings
from nim_trellis.backends.base import MeshParams
from nim_trellis.job_store import JobRecord, JobStore
from nim_trellis.jobs import STORE_FILE, Job, JobContext
from nim_trellis.protocol import Task3D
from nim_trellis.service import TrellisService
from nim_trellis.workers import INPUT_FILE

log = logging.getLogger("nim_trellis.worker")

CLAIM_POLL_S = 0.05  # an idle worker looks for work this often: one indexed SQLite read, and a job waits at most this
EXIT_ORPHANED = 3  # exit status when the service process is gone


class Heartbeat(threading.Thread):
    """Marks the worker alive; carries the running job's progress out and a cancel request in."""

    def __init__(self, store: JobStore, name: str, parent: int, interval_s: float) -> None:
        super().__init__(name="trellis-heartbeat", daemon=True)
        self.store, self.worker, self.parent, self.interval_s = store, name, parent, interval_s
        self.job: Job | None = None

    def run(self) -> None:
        while True:
            if os.getppid() != self.parent:  # the service died (kill -9): never outlive it on its GPU
                log.error("the 3D service (pid %d) is gone; %s exits", self.parent, self.worker)
                os._exit(EXIT_ORPHANED)
            now = time.time()
            self.store.execute("UPDATE workers SET heartbeat = ? WHERE name = ?", (now, self.worker))
            job = self.job
            if job is not None:
                self.store.execute(
                    "UPDATE jobs SET heartbeat = ?, progress = ? WHERE id = ? AND status = 'running'",
                    (now, job.progress, job.id),
                )
                if cancel_asked(self.store, job.id):  # also between stages (a long backend call reports in)
                    job.cancel_requested = True
            time.sleep(self.interval_s)


def cancel_asked(store: JobStore, job_id: str) -> bool:
    rows = store.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
    return bool(rows and rows[0][0])


def report(store: JobStore, name: str, device: str, state: str, detail: str, caps: dict[str, Any] | None) -> None:
    store.execute(
        "INSERT OR REPLACE INTO workers (name, device, pid, state, detail, capabilities, heartbeat) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, device, os.getpid(), state, detail, json.dumps(caps) if caps is not None else None, time.time()),
    )


def task_of(record: JobRecord, folder: Path) -> Task3D:
    """The request back from the job's row and its input file."""
    params = dict(record.params or {})
    mode, prompt = params.pop("mode"), params.pop("prompt", None)
    image = None
    if mode == "image":
        with Image.open(folder / INPUT_FILE) as img:
            image = img.copy()
    return Task3D(mode=mode, image=image, prompt=prompt, params=MeshParams(**params))


def job_of(record: JobRecord, service: TrellisService, results_dir: Path) -> Job:
    """A running `Job` for a claimed row; an input that cannot be read fails the job, not the worker."""
    job = Job(
        id=record.id,
        kind=record.kind,
        work=lambda ctx: None,
        backend=record.backend,
        output_format=record.output_format,
        seed=record.seed,
        durable=True,
        params=record.params,
    )
    job.status, job.created, job.started = "running", record.created, record.started
    try:
        task = task_of(record, results_dir / record.id)
    except (OSError, KeyError, TypeError, ValueError) as e:
        problem = e

        def unreadable(ctx: JobContext) -> None:
            raise RuntimeError(f"the job's input could not be read: {problem}")

        job.work = unreadable
        return job
    job.work, job.lean = (lambda ctx: service.run_3d(task, ctx)), service.lean_3d(task)
    return job


def serve(settings: Settings, name: str, device: str, parent: int, gpu_index: int | None) -> None:
    results_dir = settings.data_dir / "jobs"
    store = JobStore(results_dir / STORE_FILE)
    # "1": this process runs the jobs itself (it must not start workers of its own)
    service = TrellisService(settings.model_copy(update={"trellis_workers": "1"}), gpu_index=gpu_index)
    service.queue.attach_store(store)
    service.queue.cancel_check = lambda job: cancel_asked(store, job.id)
    report(store, name, device, "loading", f"loading {service.backend.name}", None)
    beat = Heartbeat(store, name, parent, settings.trellis_worker_heartbeat_s)
    beat.start()
    service.load_models()
    health = service.backend_health
    caps = {k: asdict(c) for k, c in service.backend.capabilities().items()} if health.state == "ready" else {}
    report(store, name, device, "error" if health.state == "error" else "ready", health.detail, caps)
    if health.state == "error":  # stay alive and say why (health shows it); restarting would fail the same way
        beat.join()
    while True:
        record = store.claim(name, time.time())
        if record is None:
            time.sleep(CLAIM_POLL_S)
            continue
        job = job_of(record, service, results_dir)
        beat.job = job
        service.queue.run_claimed(job)
        beat.job = None
        (results_dir / job.id / INPUT_FILE).unlink(missing_ok=True)  # the result stays; the input is done with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--device", required=True, help="the GPU id this worker is pinned to, or cpu")
    parser.add_argument("--parent", type=int, required=True, help="pid of the 3D service; the worker exits with it")
    parser.add_argument("--gpu-index", type=int, default=None, help="place of its GPU among the visible ones")
    args = parser.parse_args()
    settings = get_settings()
    if settings.hf_hub_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import time
    if settings.token:
        os.environ.setdefault("HF_TOKEN", settings.token)
    logging.basicConfig(
        level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s {args.name} %(name)s: %(message)s"
    )
    serve(settings, args.name, args.device, args.parent, args.gpu_index)


if __name__ == "__main__":
    main()
