"""The VRAM lease: a shared lock file so a 3D job and an LLM answer never hit their GPU memory peaks together.

Where the plan says `lease=True` (16gb and 24gb profiles) the GPU cannot hold the LLM's activations and a 3D or
image job's peak at the same time. Both services then take an exclusive `fcntl.flock` on one file,
`RUN_DIR/vram.lease`, around their GPU work; the kernel drops the lock when its holder exits or crashes, so a
killed process never leaves the other waiting. Where the lease is off, every method costs nothing.

- 3D service: the worker holds the lease around each GPU stage (3D backend, text-to-image), see
  `nim_trellis/service.py`; waiting for it counts against the job's timeout.
- LLM service: the engine (`nim_llm/engine.py`) takes the lease before it admits answers into an empty batch and
  releases it as soon as the batch is empty again. It never blocks on the lease: while the 3D service holds it,
  new answers stay queued (their own timeouts and cancellation still apply) and the engine looks again every
  `POLL_S`.

Taking turns, not just excluding: flock is not fair, and a holder that releases and re-acquires at once would
starve the other service (a batch of 3D jobs would hold the chat up for minutes, or a busy API would block 3D
forever). So a process that waits announces it by holding a shared lock on its own `vram.lease.want.<role>` file,
and a holder that sees another role waiting hands over: the 3D worker pauses `YIELD_S` before its next stage, the
LLM engine stops admitting new answers and releases once its running ones end.
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
    from servicekit.vram import VramPlan

LEASE_FILE = "vram.lease"
WANT_SUFFIX = ".want."
POLL_S = 0.05
YIELD_S = 4 * POLL_S  # long enough for a waiter polling every POLL_S to take the lease first


class LeaseTimeout(TimeoutError):
    """The other service held the GPU for longer than the caller would wait."""


class VramLease:
    """An exclusive lock on `path` shared between processes, taken in turns by roles; a no-op when disabled."""

    def __init__(self, path: Path, *, enabled: bool, role: str = "") -> None:
        self.path, self.enabled, self.role = path, enabled, role or str(os.getpid())
        self._fd: int | None = None
        self._want_fd: int | None = None
        self._local = threading.Lock()  # one holder per process object; flock itself is per open file

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def wanting(self) -> bool:
        return self._want_fd is not None

    def acquire(self, timeout_s: float | None = None) -> None:
        """Block until the lease is ours (or raise `LeaseTimeout` after `timeout_s`)."""
        if not self.enabled:
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._local.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise LeaseTimeout(f"the GPU lease {self.path} stayed busy for {timeout_s:g}s")
        try:
            if self.others_waiting():
                time.sleep(YIELD_S)  # their turn first
            self.want(True)
            while not self._lock_nb():
                if deadline is not None and time.monotonic() > deadline:
                    raise LeaseTimeout(f"the GPU lease {self.path} stayed busy for {timeout_s:g}s")
                time.sleep(POLL_S)
        except BaseException:
            self._local.release()
            raise
        finally:
            self.want(False)

    def try_acquire(self) -> bool:
        """Take the lease if it is free and no other role waits for it (their turn first); never blocks."""
        if not self.enabled:
            return True
        if self.held or not self._local.acquire(blocking=False):
            return self.held
        if self.others_waiting() or not self._lock_nb():
            self._local.release()
            return False
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._local.release()

    @contextlib.contextmanager
    def hold(self, timeout_s: float | None = None) -> Iterator[None]:
        self.acquire(timeout_s)
        try:
            yield
        finally:
            self.release()

    def want(self, wanting: bool) -> None:
        """Announce (or stop announcing) that this role waits for the lease."""
        if not self.enabled or wanting == self.wanting:
            return
        if wanting:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._want_path(self.role), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._want_fd = fd
        else:
            fd, self._want_fd = self._want_fd, None
            os.close(fd)  # type: ignore[arg-type]  # closing drops the flock

    def others_waiting(self) -> bool:
        """Whether a process of another role is waiting for the lease right now."""
        if not self.enabled:
            return False
        for want in self.path.parent.glob(self.path.name + WANT_SUFFIX + "*"):
            if want == self._want_path(self.role):
                continue
            try:
                fd = os.open(want, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # its owner holds a shared lock: it is waiting
            finally:
                os.close(fd)
        return False

    def _want_path(self, role: str) -> Path:
        return self.path.with_name(self.path.name + WANT_SUFFIX + role)

    def _lock_nb(self) -> bool:
        """One non-blocking attempt at the lock; on success the file records who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        self._fd = fd
        return True


def lease_for(settings: Settings, plan: VramPlan, role: str, gpu_index: int | None = None) -> VramLease:
    """The appliance's lease (RUN_DIR/vram.lease), enabled where the plan says the services must take turns.

    A 3D worker pinned to one GPU (TRELLIS_WORKERS > 1, `gpu_index` its place among the visible GPUs) shares
    that file with the LLM only on the LLM's GPU (LLM_DEVICE); on any other GPU it takes that GPU's own file,
    which nobody contends, so the lease is per device and workers never wait for each other.
    """
    name = LEASE_FILE
    if gpu_index is not None and gpu_index != llm_gpu_index(settings):
        name = f"{LEASE_FILE}.gpu{gpu_index}"
    return VramLease(settings.run_dir / name, enabled=plan.applies and plan.lease, role=role)


def llm_gpu_index(settings: Settings) -> int | None:
    """Which visible GPU the LLM runs on (`cuda` is the first), or None on the CPU."""
    device = str(settings.llm_device or "cpu")
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)
