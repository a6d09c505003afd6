"""What the worker tests (embedded queue and Redis queue) share: submitting a job over HTTP, and catching a job
while a worker process runs it, frozen there (SIGSTOP) so that a kill or a cancel meets it mid-job."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import httpx

from tests.trellis.conftest import wait_job

FINISHED = {"succeeded", "failed", "cancelled", "filtered"}
JOB_WAIT_S = 120.0
FREEZE_ATTEMPTS = 50  # a relief job takes ~0.1 s: catching one running takes a few tries at most


def submit(url: str, image: str) -> str:
    r = httpx.post(f"{url}/v1/jobs", json={"image": image}, timeout=60)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def frozen_mid_job(url: str, image: str, pids: dict[str, int], holder: Callable[[str], str | None]) -> tuple[str, str]:
    """Submit jobs until one is caught running and its worker is frozen with it: (job id, worker). `holder` says
    which worker runs a job, as the queue's store says (the HTTP API does not tell)."""
    for _ in range(FREEZE_ATTEMPTS):
        job_id = submit(url, image)
        wait_job(url, job_id, {"running", *FINISHED}, timeout_s=JOB_WAIT_S)
        worker = holder(job_id)
        if worker is None:
            continue
        os.kill(pids[worker], signal.SIGSTOP)
        if holder(job_id) == worker:
            return job_id, worker
        os.kill(pids[worker], signal.SIGCONT)  # it finished in between
    raise AssertionError("no job was ever caught running")


def cancel_mid_job(
    url: str, image: str, pids: dict[str, int], holder: Callable[[str], str | None], attempts: int
) -> list[dict]:
    """Cancel a job running in a worker process, asked while its worker is frozen mid-job so that the job has stages
    left to notice it at; one already in its last stage succeeds, so try again. Every attempt's outcome."""
    outcomes: list[dict] = []
    for _ in range(attempts):
        job_id, worker = frozen_mid_job(url, image, pids, holder)
        answer = httpx.delete(f"{url}/v1/jobs/{job_id}", timeout=30)
        os.kill(pids[worker], signal.SIGCONT)
        assert answer.status_code == 200 and answer.json()["status"] == "running", answer.text
        outcome = wait_job(url, job_id, FINISHED, timeout_s=JOB_WAIT_S)
        outcomes.append(outcome)
        if outcome["status"] == "cancelled":
            assert outcome["error_code"] == "cancelled", outcome
            break
    return outcomes
