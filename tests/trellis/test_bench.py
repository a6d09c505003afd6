"""The benchmark script runs against a live service and prints the JSON the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "studio_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_bench_reports_infer_and_job_stages(tiny_url: str) -> None:
    result = run_bench("--url", tiny_url, "--concurrency", "1,2", "--requests", "2", "--size", "128")
    assert set(result["infer"]) == {"1", "2"} and set(result["jobs"]) == {"1", "2"}
    assert result["infer"]["1"]["n"] == 2 and result["infer"]["1"]["p50_s"] > 0
    assert {"silhouette", "geometry", "export"} <= set(result["jobs"]["2"]["server_stage_mean_s"])
    assert result["jobs"]["1"]["end_to_end"]["mean_s"] >= result["jobs"]["1"]["submit_to_start"]["mean_s"]


def test_bench_local_relief_times_stages() -> None:
    result = run_bench("--local", "--requests", "2", "--size", "256")
    assert result["end_to_end"]["n"] == 2 and set(result["stage_mean_s"]) == {"silhouette", "geometry", "export"}
