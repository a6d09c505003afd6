"""Jobs survive a `kill -9` of the 3D service: the real service (`tiny` profile, its defaults) as its own process,
killed while jobs run and wait, then started again on the same DATA_DIR. Every job id answers with a true status,
every finished result downloads, and nothing is left "running" or "queued" forever."""

from __future__ import annotations

import base64
import io
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.studio.live import base_env, process, wait_ready
from tests.support import free_port
from tests.trellis.conftest import wait_job

pytestmark = pytest.mark.slow
FINISHED = {"succeeded", "failed", "cancelled", "filtered"}
BATCH = 15  # jobs in flight when the service is killed


def object_png(side: int = 1024) -> bytes:
    """A large image with an object in the middle, so that each job takes a while."""
    rgba = np.zeros((side, side, 4), np.uint8)
    yy, xx = np.mgrid[:side, :side]
    inside = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side * 0.4) ** 2
    rgba[inside] = (200, 120, 60, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def test_jobs_answer_after_a_kill_and_finished_results_download(tmp_path: Path) -> None:
    data_dir, cache_dir, port = tmp_path / "data", tmp_path / "cache", free_port()
    env = {**base_env(data_dir, cache_dir), "TRELLIS_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    image = "data:image/png;base64," + base64.b64encode(object_png()).decode()
    args = ["-m", "nim_trellis.run_trellis_local"]

    with process(args, env, tmp_path / "first.log") as first:
        wait_ready(f"{url}/v1/health/ready", first, tmp_path / "first.log")
        done_id = httpx.post(f"{url}/v1/jobs", json={"image": image}, timeout=60).json()["id"]
        assert wait_job(url, done_id, FINISHED)["status"] == "succeeded"
        in_flight = [httpx.post(f"{url}/v1/jobs", json={"image": image}, timeout=60).json()["id"] for _ in range(BATCH)]
        first.send_signal(signal.SIGKILL)  # no shutdown code runs
        first.wait(timeout=30)

    with process(args, env, tmp_path / "second.log") as second:
        wait_ready(f"{url}/v1/health/ready", second, tmp_path / "second.log")
        statuses = {}
        for job_id in [done_id, *in_flight]:
            r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
            assert r.status_code == 200, (job_id, r.text)
            statuses[job_id] = r.json()
        assert all(s["status"] in FINISHED for s in statuses.values()), statuses  # none left queued or running
        interrupted = [s for s in statuses.values() if s["status"] == "failed"]
        assert interrupted, "the kill came after every job had finished: nothing was in flight"
        for s in interrupted:
            assert s["error_code"] == "interrupted" and "restarted while this job was" in s["error"], s
        succeeded = [i for i, s in statuses.items() if s["status"] == "succeeded"]
        assert done_id in succeeded
        for job_id in succeeded:
            result = httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=30)
            assert result.status_code == 200 and result.content[:4] == b"glTF", job_id
        # The restarted service takes new work as before.
        again = httpx.post(f"{url}/v1/jobs", json={"image": image}, timeout=60).json()["id"]
        assert wait_job(url, again, FINISHED)["status"] == "succeeded"
