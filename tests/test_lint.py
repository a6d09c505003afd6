"""The code base stays lint-clean and consistently formatted."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from config import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff") or shutil.which("ruff", path=str(ROOT / ".venv" / "bin"))
    cmd = [exe, *args] if exe else [sys.executable, "-m", "ruff", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")], ids=["lint", "format"])
def test_ruff_finds_nothing(args: tuple[str, ...]) -> None:
    out = ruff(*args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
