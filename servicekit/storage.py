"""Can this process save under DATA_DIR? The one storage check of the 3D service's readiness, its jobs API and the
container's healthcheck (`scripts/healthcheck.py`), so a full or read-only disk shows as a reason, not as a job that
fails later with a bare errno.

Writable means a file can actually be created, written and removed there: permission bits say nothing for root,
and a read-only mount or a file standing where the directory should be only shows when something tries. Standard
library only (the healthcheck imports it).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

MB = 2**20
PROBE_PREFIX = ".storage-check-"

# What an OSError's errno means for someone who wants to save a file there.
ERRNO_WORDS = {
    errno.EROFS: "is read-only",
    errno.EACCES: "is not writable",
    errno.EPERM: "is not writable",
    errno.ENOTDIR: "is not a directory (a file is in the way)",
    errno.EEXIST: "is not a directory (a file is in the way)",
    errno.ENOSPC: "is on a full disk",
    errno.EDQUOT: "is over its disk quota",
    errno.EFBIG: "is on a full disk or over the file-size limit",
}


def cannot_save(where: str, err: OSError) -> str:
    """Why a save under `where` (e.g. "DATA_DIR /x") failed, in words: `cannot save: DATA_DIR /x is read-only`."""
    what = ERRNO_WORDS.get(err.errno or 0, "failed")
    return f"cannot save: {where} {what} ({err.strerror or err})"


def check_storage(path: Path, min_free_mb: int, setting: str = "DATA_DIR") -> str | None:
    """None when `path` takes a new file and has `min_free_mb` free; otherwise the reason in words."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return cannot_save(f"{setting} {path}", e)
    free_mb = shutil.disk_usage(path).free // MB
    if free_mb < min_free_mb:
        return f"disk full: {free_mb} MB free at {path}, need {min_free_mb} MB (STORAGE_MIN_FREE_MB)"
    return None


class StorageCheck:
    """`check_storage`, remembered for `interval_s` so that health probes and job submissions stay cheap."""

    def __init__(self, path: Path, min_free_mb: int, interval_s: float, setting: str = "DATA_DIR") -> None:
        self.path, self.min_free_mb, self.interval_s, self.setting = path, min_free_mb, interval_s, setting
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        """The reason nothing can be saved now, or None."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self.interval_s:
                self._problem = check_storage(self.path, self.min_free_mb, self.setting)
                self._checked_at = time.monotonic()
            return self._problem
