"""Storage failures are first-class: readiness names them, jobs that cannot be saved are refused or fail with the
reason, and no temp file is left behind.

How these tests make DATA_DIR unusable. They run as root (here and in CI), whom file modes do not stop, and CI may
not allow `mount` or `chattr`. What stops root everywhere without privileges:
- a regular file where a directory is expected: nothing can be created below it (ENOTDIR), the "cannot save" case;
- RLIMIT_FSIZE, a per-process cap on file size that any user may lower: a write past it fails after part of the
  file is on disk (EFBIG), exactly like a disk that fills up mid-write;
- STORAGE_MIN_FREE_MB above what the disk has, for the free-space rule.
A real read-only mount (tmpfs) is tried as well where the machine allows it, and skipped where it does not.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nim_trellis.jobs import STORE_FILE
from tests.trellis.conftest import running, wait_job, wait_loaded

FINISHED = {"succeeded", "failed", "cancelled", "filtered"}
NO_MODELS = {"imagegen_model": "", "safety_prompt_model": "", "safety_image_model": ""}  # storage is the subject


def blocked_dir(tmp_path: Path) -> Path:
    """A DATA_DIR nobody can save under, root included: a regular file stands where the directory should be."""
    path = tmp_path / "data"
    path.write_text("not a directory")
    return path


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Writes past `max_bytes` fail for this whole process (Python ignores SIGXFSZ, so they raise EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def read_only_mount(path: Path) -> Iterator[Path]:
    """A read-only tmpfs at `path`; skips the test where mounting is not allowed (CI without privileges)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_ready_names_a_data_dir_that_cannot_be_written(make_settings, tmp_path: Path, png_uri: str) -> None:
    data = blocked_dir(tmp_path)
    with running(make_settings(data_dir=data, **NO_MODELS), ready=False) as url:
        assert httpx.get(f"{url}/v1/health/live").status_code == 200
        body = wait_loaded(url)
        ready = httpx.get(f"{url}/v1/health/ready")
        assert ready.status_code == 503 and body["status"] == "error"
        assert f"cannot save: DATA_DIR {data}" in body["message"], body["message"]
        assert body["storage"]["state"] == "error" and body["storage"]["detail"] in body["message"]

        job = httpx.post(f"{url}/v1/jobs", json={"image": png_uri})
        assert job.status_code == 507, job.text
        assert job.json()["error"]["code"] == "storage_unavailable"
        assert f"DATA_DIR {data}" in job.json()["error"]["message"]

        # /v1/infer keeps its result in memory and answers in full; nothing needs saving.
        infer = httpx.post(f"{url}/v1/infer", json={"image": png_uri}, timeout=60)
        assert infer.status_code == 200 and infer.json()["artifacts"][0]["finishReason"] == "SUCCESS"


def test_ready_says_the_disk_is_full_below_storage_min_free_mb(make_settings) -> None:
    need = 10**9  # a petabyte: more than any test machine has free
    settings = make_settings(storage_min_free_mb=need, **NO_MODELS)
    with running(settings, ready=False) as url:
        body = wait_loaded(url)
        assert httpx.get(f"{url}/v1/health/ready").status_code == 503
        assert "disk full:" in body["message"] and f"need {need} MB (STORAGE_MIN_FREE_MB)" in body["message"]


def test_ready_names_a_read_only_data_dir(make_settings, tmp_path: Path) -> None:
    with (
        read_only_mount(tmp_path / "ro") as data,
        running(make_settings(data_dir=data, **NO_MODELS), ready=False) as url,
    ):
        body = wait_loaded(url)
        assert f"cannot save: DATA_DIR {data} is read-only" in body["message"], body["message"]


def test_job_that_cannot_store_its_result_fails_with_the_reason_and_leaves_no_file(
    make_settings, tmp_path: Path, png_uri: str
) -> None:
    settings = make_settings(data_dir=tmp_path / "data", **NO_MODELS)
    with running(settings) as url:
        with file_size_limit(4096):  # the GLB is far larger: its write fails part-way, as on a full disk
            job_id = httpx.post(f"{url}/v1/jobs", json={"image": png_uri}).json()["id"]
            done = wait_job(url, job_id, FINISHED)
        assert done["status"] == "failed" and done["error_code"] == "storage", done
        assert "cannot save" in done["error"] and str(settings.data_dir) in done["error"], done["error"]
        left = [p for p in (settings.data_dir / "jobs").rglob("*") if p.is_file() and not p.name.startswith(STORE_FILE)]
        assert left == [], left
        # the worker and the store keep going once the disk has room again
        again = httpx.post(f"{url}/v1/jobs", json={"image": png_uri}).json()["id"]
        assert wait_job(url, again, FINISHED)["status"] == "succeeded"
        assert httpx.get(f"{url}/v1/jobs/{again}/result").status_code == 200
