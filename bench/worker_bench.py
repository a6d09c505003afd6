"""3D jobs/s with one and with two worker processes, and the shared queue's own cost per job; prints JSON.

`python -m bench.worker_bench [--jobs 24]`. Each run starts the real 3D service (`tiny` profile: the relief
backend on the CPU) as its own process with TRELLIS_WORKERS set, sends a burst of `/v1/jobs` and times the burst
from the first submit to the last finished job. TRELLIS_WORKERS=1 is the in-process worker thread (the default);
2 is two worker processes on the SQLite queue. On a machine with fewer cores than workers the speed-up is capped by
the cores. `queue_overhead_ms` is the store's work for one job without any model: insert, claim, three stage
records and the final record, on a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.appliance import free_port, running
from nim_trellis.job_store import JobRecord, JobStore

READY_TIMEOUT_S = 180.0
POLL_S = 0.02
STAGES_PER_JOB = 3  # stage records a relief job writes besides queued, running and finished
IMAGE_SIDE = 1024


def object_png(side: int = IMAGE_SIDE) -> str:
    rgba = np.zeros((side, side, 4), np.uint8)
    yy, xx = np.mgrid[:side, :side]
    rgba[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side * 0.4) ** 2] = (200, 120, 60, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_ready(url: str, workers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{url}/v1/health/ready", timeout=5).json()
            listed = body.get("workers") or []
            if body.get("status") == "ready" and (workers == 1 or all(w["state"] == "ready" for w in listed)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} never became ready")


def jobs_per_second(workers: int, jobs: int, image: str) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRELLIS_", "LLM_"))}
        env.update(
            CHAT3D_PROFILE="tiny",
            DATA_DIR=f"{tmp}/data",
            CACHE_DIR=f"{tmp}/cache",
            HF_HUB_OFFLINE="1",
            LOG_LEVEL="warning",
            TRELLIS_PORT=str(port),
            TRELLIS_WORKERS=str(workers),
        )
        with running([sys.executable, "-m", "nim_trellis.run_trellis_local"], env, Path(tmp) / "service.log"):
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, workers)
            start = time.perf_counter()
            ids = [httpx.post(f"{url}/v1/jobs", json={"image": image}, timeout=60).json()["id"] for _ in range(jobs)]
            for job_id in ids:
                while httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()["status"] in {"queued", "running"}:
                    time.sleep(POLL_S)
            return jobs / (time.perf_counter() - start)


def queue_overhead_ms(jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "jobs.sqlite3")
        base = JobRecord(
            "", "3d", "relief", "glb", 1, "queued", None, 0.0, None, None, None, 0.0, None, None, None, None, {}
        )
        start = time.perf_counter()
        for i in range(jobs):
            store.put(replace(base, id=str(i), created=time.time()))
            claimed = store.claim("bench", time.time())
            assert claimed is not None
            for stage in range(STAGES_PER_JOB):
                store.put(replace(claimed, stage=str(stage)))
            store.put(replace(claimed, status="succeeded", finished=time.time()))
        elapsed = time.perf_counter() - start
        store.close()
        return 1000 * elapsed / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    args = parser.parse_args()
    image = object_png()
    one, two = jobs_per_second(1, args.jobs, image), jobs_per_second(2, args.jobs, image)
    result = {
        "backend": "relief",
        "cpu_cores": os.cpu_count(),
        "jobs": args.jobs,
        "image_side": IMAGE_SIDE,
        "jobs_per_s_1_worker": round(one, 2),
        "jobs_per_s_2_workers": round(two, 2),
        "speedup": round(two / one, 2),
        "queue_overhead_ms": round(queue_overhead_ms(args.jobs * 10), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
