"""The code base stays lint-clean and consistently formatted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    # The interpreter's own ruff, so the pinned version in requirements-dev.txt is the one that judges.
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")], ids=["lint", "format"])
def test_ruff_finds_nothing(args: tuple[str, ...]) -> None:
    out = ruff(*args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
