"""bench/gpu_e2e.py's parts against a live 3D service (the whole script needs a GPU; `--smoke` runs it on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gpu_e2e


def test_appliance_env_sets_only_where_models_are(tmp_path: Path) -> None:
    """The benchmark measures the gpu profile as users get it: no budget, timeout or model knob is turned."""
    models = {"llm": "/m/llm", "imagegen": "/m/sana", "trellis": "/m/trellis", "torch_home": "/m/torch"}
    env = gpu_e2e.appliance_env(tmp_path, {**models, "u2net_home": "/m/u2net", "pythonpath": ["/src/TRELLIS"]})
    assert env["CHAT3D_PROFILE"] == "gpu" and env["PYTHONPATH"].startswith("/src/TRELLIS")
    tuned = {k for k in env if k.startswith(("UI_", "LLM_", "TRELLIS_", "MESH_", "JOB_", "VRAM_"))}
    assert tuned == {"LLM_MODEL", "LLM_PORT", "TRELLIS_PORT", "TRELLIS_IMAGE_MODEL"}
    assert gpu_e2e.appliance_env(tmp_path, None)["CHAT3D_PROFILE"] == "tiny"


def test_infer_and_job_measurements_against_a_live_service(tiny_url: str) -> None:
    image = gpu_e2e.test_image()
    infer = gpu_e2e.measure_infer(tiny_url, image, steps=10)
    assert len(infer["json_s"]) == len(infer["file_s"]) == gpu_e2e.INFER_RUNS
    assert infer["glb_faces"] > 0 and infer["json_mb"] > infer["glb_mb"] > 0 and infer["stl_mb"] > 0
    job = gpu_e2e.run_job(tiny_url, {"image": image, "no_texture": True})
    assert job["status"] == "succeeded" and job["mb"] > 0 and job["progress_updates"] >= 1
    assert sum(job["stages_s"].values()) <= job["total_s"]


def test_report_is_written_after_every_step(tmp_path: Path) -> None:
    report = gpu_e2e.Report(tmp_path / "out" / "e2e.json", date="2026-01-01")
    report["ready_s"] = {"llm": 1.0}
    assert json.loads((tmp_path / "out" / "e2e.json").read_text()) == {"date": "2026-01-01", "ready_s": {"llm": 1.0}}
