"""The VRAM lease: a shared lock file so a 3D job and an LLM answer never hit their GPU memory peaks together.

Where the plan says `lease=True` (16gb and 24gb profiles) the GPU cannot hold the LLM's activations and a 3D or
image job's peak at the same time. Both services then take an exclusive `fcntl.flock` on one file,
`RUN_DIR/vram.lease`, around their GPU work; the kernel drops the lock when its holder exits or crashes, so a
killed process never leaves the other waiting. Where the lease is off, `hold` costs nothing.

- 3D service: the worker holds the lease around each GPU stage (3D backend, text-to-image), see
  `nim_trellis/service.py`; waiting for it counts against the job's timeout.
- LLM service (hook, to be wired in `nim_llm/engine.py`): hold the lease while the engine has running sequences,
  i.e. acquire with `lease.acquire()` when the batch goes from empty to non-empty (before the first prefill) and
  `lease.release()` when it becomes empty again; build it with `lease_for(settings, llm_plan(settings))`.
  A 3D job then waits for the current answers to finish, and new answers wait for the 3D stage to end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import Settings
    from vram import VramPlan

LEASE_FILE = "vram.lease"
POLL_S = 0.05


class LeaseTimeout(TimeoutError):
    """The other service held the GPU for longer than the caller would wait."""


class VramLease:
    """An exclusive lock on `path`, shared between processes; a no-op when `enabled` is False."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self._fd: int | None = None
        self._local = threading.Lock()  # one holder per process object; flock itself is per open file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, holder: str = "", timeout_s: float | None = None) -> None:
        """Block until the lease is ours (or raise `LeaseTimeout` after `timeout_s`)."""
        if not self.enabled:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._local.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise LeaseTimeout(f"the GPU lease {self.path} stayed busy for {timeout_s:g}s")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        os.close(fd)
                        raise LeaseTimeout(f"the GPU lease {self.path} stayed busy for {timeout_s:g}s") from None
                    time.sleep(POLL_S)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {holder}\n".encode())
            self._fd = fd
        except BaseException:
            self._local.release()
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._local.release()

    @contextlib.contextmanager
    def hold(self, holder: str = "", timeout_s: float | None = None) -> Iterator[None]:
        self.acquire(holder, timeout_s)
        try:
            yield
        finally:
            self.release()


def lease_for(settings: Settings, plan: VramPlan) -> VramLease:
    """The appliance's lease (RUN_DIR/vram.lease), enabled where the plan says the services must take turns."""
    return VramLease(settings.run_dir / LEASE_FILE, enabled=plan.applies and plan.lease)
