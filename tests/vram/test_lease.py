"""The VRAM lease excludes across processes, times out when asked, and costs nothing when off."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from servicekit.vram_lease import LeaseTimeout, VramLease

HOLD_S = 0.4


def _hold(path: str, name: str, log: str, ready: object) -> None:
    lease = VramLease(Path(path), enabled=True, role=name)
    ready.wait()  # type: ignore[attr-defined]
    with lease.hold(), open(log, "a") as f:
        f.write(f"{name} start {time.monotonic()}\n")
        f.flush()
        time.sleep(HOLD_S)
        f.write(f"{name} end {time.monotonic()}\n")


def test_lease_excludes_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    log = tmp_path / "log.txt"
    procs = [
        ctx.Process(target=_hold, args=(str(tmp_path / "vram.lease"), name, str(log), ready)) for name in ("3d", "llm")
    ]
    for p in procs:
        p.start()
    ready.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    events = [line.split() for line in log.read_text().splitlines()]
    assert [e[1] for e in events] == ["start", "end", "start", "end"]  # never interleaved
    assert events[0][0] == events[1][0] and events[2][0] == events[3][0]
    assert float(events[2][2]) >= float(events[1][2])


def test_lease_times_out_while_another_holds_it(tmp_path: Path) -> None:
    first = VramLease(tmp_path / "vram.lease", enabled=True, role="3d")
    second = VramLease(tmp_path / "vram.lease", enabled=True, role="llm")
    with first.hold():
        started = time.monotonic()
        with pytest.raises(LeaseTimeout):
            second.acquire(timeout_s=0.2)
        assert time.monotonic() - started < 2
    with second.hold():  # free again once released
        assert second.held
    assert not second.held


def test_disabled_lease_is_a_no_op(tmp_path: Path) -> None:
    lease = VramLease(tmp_path / "run" / "vram.lease", enabled=False)
    with lease.hold(), lease.hold():
        pass
    assert not (tmp_path / "run").exists()
