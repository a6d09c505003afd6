"""One 3D worker process (TRELLIS_WORKERS > 1), started and supervised by the 3D service (`nim_trellis/workers.py`):
`python -m nim_trellis.worker --name worker0 --device 0 --parent PID [--gpu-index 0]`.

With JOB_QUEUE_URL=redis://... (or `--queue-url`) workers are started on their own, one per GPU on any host that
mounts the shared DATA_DIR: `python -m nim_trellis.worker --queue-url redis://host:6379/0 --device 0`. Such a
worker has no parent to watch; whatever starts it (systemd, compose, Kubernetes) restarts it, and API processes
fail the job it held once its heartbeat is TRELLIS_WORKER_STALE_S old (`nim_trellis/redis_store.py`).

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
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from config import Settings, get_settings
from nim_trellis.backends.base import MeshParams
from nim_trellis.job import Job, JobContext
from nim_trellis.job_store import JobRecord
from nim_trellis.protocol import Task3D, WorkerHealth
from nim_trellis.queue_store import QueueStore, open_queue_store
from nim_trellis.service import TrellisService
from nim_trellis.workers import INPUT_FILE

log = logging.getLogger("nim_trellis.worker")

CLAIM_POLL_S = 0.05  # an idle worker looks for work this often: one indexed SQLite read, and a job waits at most this
EXIT_ORPHANED = 3  # exit status when the service process is gone


class Heartbeat(threading.Thread):
    """Marks the worker alive; carries the running job's progress out and a cancel request in."""

    def __init__(self, store: QueueStore, name: str, parent: int | None, interval_s: float) -> None:
        super().__init__(name="trellis-heartbeat", daemon=True)
        self.store, self.worker, self.parent, self.interval_s = store, name, parent, interval_s
        self.job: Job | None = None

    def run(self) -> None:
        while True:
            if self.parent is not None and os.getppid() != self.parent:  # the service died (kill -9): never
                log.error("the 3D service (pid %d) is gone; %s exits", self.parent, self.worker)  # outlive it
                os._exit(EXIT_ORPHANED)
            now = time.time()
            try:
                self.beat(now)
            except Exception:  # the queue's server unreachable for a moment: the next beat tries again
                log.exception("%s could not report its heartbeat", self.worker)
            time.sleep(self.interval_s)

    def beat(self, now: float) -> None:
        self.store.beat_worker(self.worker, now)
        job = self.job
        if job is not None:
            self.store.beat_job(job.id, now, job.progress)
            if self.store.cancel_requested(job.id):  # also between stages (a long backend call reports in)
                job.cancel_requested = True


def report(store: QueueStore, name: str, device: str, state: str, detail: str, caps: dict[str, Any] | None) -> None:
    worker = WorkerHealth(name=name, device=device, pid=os.getpid(), state=state, detail=detail)  # type: ignore[arg-type]
    store.report_worker(worker, caps, time.time())


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


def serve(settings: Settings, name: str, device: str, parent: int | None, gpu_index: int | None) -> None:
    results_dir = settings.data_dir / "jobs"
    store = open_queue_store(
        settings.job_queue_url,
        results_dir,
        retention_s=settings.job_retention_s,
        worker_ttl_s=settings.trellis_worker_stale_s,
    )
    # This process runs the jobs itself: it must neither start workers of its own nor send jobs to a queue.
    service = TrellisService(
        settings.model_copy(update={"trellis_workers": "1", "job_queue_url": ""}), gpu_index=gpu_index
    )
    service.queue.attach_store(store)
    service.queue.cancel_check = lambda job: store.cancel_requested(job.id)
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
    parser.add_argument("--name", default=None, help="unique among the workers (default HOST-DEVICE-PID)")
    parser.add_argument("--device", default="cpu", help="the GPU id this worker is pinned to, or cpu")
    parser.add_argument("--parent", type=int, default=None, help="pid of the 3D service; the worker exits with it")
    parser.add_argument("--gpu-index", type=int, default=None, help="place of its GPU among the visible ones")
    parser.add_argument("--queue-url", default=None, help="redis://... (default JOB_QUEUE_URL)")
    args = parser.parse_args()
    settings = get_settings()
    if args.queue_url:
        settings = settings.model_copy(update={"job_queue_url": args.queue_url})
    if args.parent is None and not settings.job_queue_url:
        parser.error("a worker of the embedded queue is started by the 3D service; give --queue-url to run one alone")
    if args.parent is None and args.device != "cpu":  # started alone: pin itself to its GPU before CUDA starts
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
        if args.gpu_index is None and args.device.isdigit():  # its place on this host, for the VRAM lease shared
            args.gpu_index = int(args.device)  # with an LLM on the same GPU
    args.name = args.name or f"{socket.gethostname()}-{args.device}-{os.getpid()}"
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
