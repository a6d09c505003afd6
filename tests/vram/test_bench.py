"""bench/vram_fit.py says plainly that it did not run on a machine without CUDA, and shows the plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_vram_fit_without_cuda_reports_not_run() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the bench would really run")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "vram_fit.py"), "--profiles", "16gb,24gb"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["ran"] is False and "CUDA" in result["reason"]
    assert set(result["plans"]) == {"16gb", "24gb"} and "4-bit LLM" in result["plans"]["16gb"]["lowered"]
