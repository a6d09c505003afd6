"""The whole appliance on one CUDA machine, end to end, with full-size random-weight models (no hub access needed).

    python bench/gpu_e2e.py --models /data/e2e-models --llama-tokenizer tokenizer.model   # build once, then run
    python bench/gpu_e2e.py --smoke                    # CPU: tiny profile and relief 3D, checks the plumbing only

1. Models, built once under --models (`bench/random_models.py`, `bench/random_trellis.py`): Llama-3.1-8B's exact
   shape in bf16 with Meta's own tokenizer (`bench/llama3_tokenizer.py`, from the `llama-models` wheel: real
   prompt lengths, and JSON that constrained decoding can spell), SANA-Sprint 0.6B, TRELLIS-image-large from the
   vendored configs, and DINOv2 ViT-L/14-reg weights where `torch.hub` looks. Stand-ins, because their weights
   are downloads this machine cannot make: the tiny builtin safety classifiers (the real ones are ~0.6 GB
   together) and rembg's u2net (a one-layer ONNX graph with u2net's inputs and outputs, so background removal's
   own time is not in the figures). Timings are real; random weights make scattered meshes and gibberish plans.
2. `start.sh` with `CHAT3D_PROFILE=gpu`, those folders as the model settings, `FETCH_MODELS=0`, `HF_HUB_OFFLINE=1`,
   everything else at its default: seconds from start until each program is ready.
3. The 3D API: image → untextured GLB through `/v1/infer` (NIM JSON with base64, and the raw file), STL, and
   textured GLBs through `/v1/jobs`, with the job's stages timed by polling (where the time goes).
4. The studio through gradio_client, as a user: scene request → plan → concept images → 3D for every card →
   export ZIP, timing each step from the moment the request was sent.

Peak GPU memory per program comes from NVML, sampled every 0.25 s. Prints one JSON object (and writes --out).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.appliance import PROGRAMS, base_env, started

ROOT = Path(__file__).resolve().parent.parent

SCENE_REQUEST = "Create a cozy reading corner with an armchair, a floor lamp and a small bookshelf"
POLL_S = 0.1
NVML_PERIOD_S = 0.25
INFER_RUNS = 3
TEXTURED_RUNS = 2
STEPS = 12
DINOV2 = "dinov2_vitl14_reg"  # TRELLIS-image-large's image conditioning
ONNX_IR_VERSION = 8  # what onnxruntime releases of the last years all load (newer onnx writes versions they refuse)


# --- models -----------------------------------------------------------------------------------------------------
def build_models(root: Path, tokenizer_model: Path | None) -> dict[str, Any]:
    """Every gpu-profile model folder under `root` (each built once), with the seconds each build took."""
    from bench import random_models, random_trellis

    device = "cuda"
    sources = import_trellis(root)
    built: dict[str, Any] = {"seconds": {}, "pythonpath": [str(p) for p in trellis_paths(sources)]}
    steps = {
        "llm": lambda: random_models.build_llama(root, device, tokenizer_model=tokenizer_model),
        "imagegen": lambda: random_models.build_sana_sprint(root, device),
        "trellis": lambda: random_trellis.build_trellis_image(root, device, size="full"),
        "torch_home": lambda: random_trellis.build_dinov2_hub(root / "torch", sources.dinov2, DINOV2, device).parent,
        "u2net_home": lambda: u2net_stand_in(root / "u2net"),
    }
    for name, build in steps.items():
        t0 = time.perf_counter()
        built[name] = build()
        built["seconds"][name] = round(time.perf_counter() - t0, 1)
    return built


def trellis_paths(sources: Any) -> list[Path]:
    """What the image puts on PYTHONPATH for TRELLIS: its sources, utils3d and the kaolin stand-in."""
    return [sources.trellis, sources.utils3d, ROOT / "docker" / "kaolin_stub"]


def import_trellis(root: Path) -> Any:
    """The vendored sources unpacked under `root`, importable here the way the 3D service imports them."""
    from bench.random_trellis import unpack_sources
    from config import Settings
    from nim_trellis.backends import optional_deps
    from nim_trellis.backends.trellis import configure_attention

    sources = unpack_sources(root / "third_party")
    sys.path[:0] = [str(p) for p in trellis_paths(sources)]
    configure_attention(Settings(_env_file=None, profile="gpu"))
    optional_deps.defer()
    return sources


def u2net_stand_in(folder: Path) -> Path:
    """rembg's `u2net.onnx` replaced by one convolution and a sigmoid with u2net's input and output shapes."""
    path = folder / "u2net.onnx"
    if path.exists():
        return folder
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 3, 3, 3), 1.0 / 27, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["c"], ["d0"]),
        ],
        "u2net_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, 320, 320])],
        [weight],
    )
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ONNX_IR_VERSION
    onnx.save(model, path)
    return folder


# --- the appliance ----------------------------------------------------------------------------------------------
def appliance_env(work: Path, models: dict[str, Any] | None) -> dict[str, str]:
    """start.sh's environment: the gpu profile's defaults with only the model locations set (tiny for --smoke)."""
    env = base_env(work, "tiny" if models is None else "gpu")
    if models is None:  # --smoke: the tiny profile's own builtin models, on the CPU
        return env
    env["PYTHONPATH"] = os.pathsep.join([*models["pythonpath"], env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        LLM_MODEL=str(models["llm"]),
        IMAGEGEN_MODEL=str(models["imagegen"]),
        TRELLIS_IMAGE_MODEL=str(models["trellis"]),
        TORCH_HOME=str(models["torch_home"]),
        U2NET_HOME=str(models["u2net_home"]),
        SAFETY_PROMPT_MODEL="builtin:tiny-prompt-classifier",
        SAFETY_IMAGE_MODEL="builtin:tiny-image-classifier",
    )
    return env


class GpuPeaks:
    """Peak GPU memory of each program's process, from NVML (None where NVML cannot see processes)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:  # no NVML (CPU smoke runs)
            self.error = f"{type(e).__name__}: {e}"
            return
        while not self._stop.wait(NVML_PERIOD_S):
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                program = _program_of(proc.pid)
                if program and proc.usedGpuMemory:
                    self.peaks[program] = max(self.peaks.get(program, 0.0), proc.usedGpuMemory / 2**30)

    def report(self) -> dict[str, Any]:
        return {"gib": {k: round(v, 2) for k, v in sorted(self.peaks.items())}, "error": self.error}


def _program_of(pid: int) -> str | None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return next((name for name, marker in PROGRAMS.items() if marker in cmdline), None)


# --- the 3D API -------------------------------------------------------------------------------------------------
def test_image() -> str:
    """A 1024² RGBA object on transparency (no background removal needed), as a data URI."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (1024, 1024), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((192, 192, 832, 832), fill=(200, 60, 40, 255))
    draw.rectangle((472, 96, 552, 928), fill=(40, 160, 70, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def measure_infer(base: str, image: str, steps: int) -> dict[str, Any]:
    """Image → untextured GLB through /v1/infer, as NIM JSON and as the raw file; and an STL."""
    import httpx
    import trimesh

    body = {"image": image, "no_texture": True, "ss_sampling_steps": steps, "slat_sampling_steps": steps}
    out: dict[str, Any] = {"json_s": [], "file_s": []}
    for _ in range(INFER_RUNS):
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/infer", json=body, timeout=600)
        out["json_s"].append(round(time.perf_counter() - t0, 3))
        r.raise_for_status()
        glb, json_bytes = base64.b64decode(r.json()["artifacts"][0]["base64"]), len(r.content)
    for _ in range(INFER_RUNS):
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/infer", json=body, headers={"Accept": "model/gltf-binary"}, timeout=600)
        out["file_s"].append(round(time.perf_counter() - t0, 3))
        r.raise_for_status()
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    out.update(glb_mb=round(len(glb) / 1e6, 2), glb_faces=len(mesh.faces), json_mb=round(json_bytes / 1e6, 2))
    t0 = time.perf_counter()
    stl = httpx.post(
        f"{base}/v1/infer", json={**body, "output_format": "stl"}, headers={"Accept": "model/stl"}, timeout=600
    )
    stl.raise_for_status()
    out.update(stl_s=round(time.perf_counter() - t0, 3), stl_mb=round(len(stl.content) / 1e6, 2))
    return out


def run_job(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """One job through /v1/jobs, polled: total time, seconds per stage, how often progress moved, file size."""
    import httpx

    t0 = time.perf_counter()
    job = httpx.post(f"{base}/v1/jobs", json=body, timeout=60).json()
    stages: dict[str, float] = {}
    last_stage, since, moves, last_progress = None, t0, 0, -1.0
    while True:
        s = httpx.get(f"{base}/v1/jobs/{job['id']}", timeout=60).json()
        now = time.perf_counter()
        if s["stage"] != last_stage:
            if last_stage is not None:
                stages[last_stage] = round(stages.get(last_stage, 0.0) + now - since, 3)
            last_stage, since = s["stage"], now
        if s["progress"] != last_progress:
            moves, last_progress = moves + 1, s["progress"]
        if s["status"] not in ("queued", "running"):
            break
        time.sleep(POLL_S)
    total = round(time.perf_counter() - t0, 3)
    result: dict[str, Any] = {"status": s["status"], "error": s.get("error"), "total_s": total, "stages_s": stages}
    result["progress_updates"] = moves
    if s["status"] == "succeeded":
        data = httpx.get(f"{base}/v1/jobs/{job['id']}/result", timeout=60).content
        result["mb"] = round(len(data) / 1e6, 2)
    return result


def measure_jobs(base: str, image: str, steps: int, textured_runs: int) -> dict[str, Any]:
    body = {"image": image, "ss_sampling_steps": steps, "slat_sampling_steps": steps}
    return {
        "untextured": run_job(base, {**body, "no_texture": True}),
        "textured": [run_job(base, body) for _ in range(textured_runs)],
    }


# --- the studio -------------------------------------------------------------------------------------------------
def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def drive_studio(app: str, steps: int, no_texture: bool) -> dict[str, Any]:
    """A scene through the studio's named endpoints, timed from the moment the request was sent."""
    from gradio_client import Client

    client = Client(app, verbose=False)
    t0 = time.perf_counter()
    history, scene = client.predict(user(SCENE_REQUEST), api_name="/chat")
    out: dict[str, Any] = {"plan_s": round(time.perf_counter() - t0, 3)}
    if not scene or not scene.get("objects"):
        return {**out, "error": "no plan", "reply": str(history[-1]["content"])[:500] if history else None}
    out["objects"] = len(scene["objects"])
    out["first_image_s"], scene = _first(client.submit(api_name="/generate_images"), t0, _has(lambda o: o.get("image")))
    out["all_images_s"] = round(time.perf_counter() - t0, 3)
    t3d = time.perf_counter()
    job = client.submit(0, steps, steps, 7.5, 3.0, no_texture, api_name="/generate_3d")
    first, scene = _first(job, t0, _has(lambda o: o.get("model")))
    out.update(first_glb_s=first, all_glbs_s=round(time.perf_counter() - t0, 3))
    objects = scene["objects"] if scene else []
    out["glbs"] = sum(bool(o.get("model")) for o in objects)
    out["per_card_3d_s"] = round((time.perf_counter() - t3d) / max(len(objects), 1), 3)
    out["errors"] = sorted({o["model_error"] for o in objects if o.get("model_error")})[:5]
    t_export = time.perf_counter()
    zip_path, _glb = client.predict(api_name="/export")
    out.update(export_s=round(time.perf_counter() - t_export, 3), zip_mb=round(Path(zip_path).stat().st_size / 1e6, 2))
    return out


def _has(pred: Any) -> Any:
    return lambda scene: bool(scene) and any(pred(o) for o in scene["objects"])


def _first(job: Any, t0: float, done: Any) -> tuple[float | None, Any]:
    """Seconds since t0 when a streamed board first satisfies `done`, and the last board."""
    first, scene = None, None
    for output in job:
        scene = output[-1] if isinstance(output, tuple | list) else output
        if first is None and done(scene):
            first = round(time.perf_counter() - t0, 3)
    return first, scene


# --- main -------------------------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    for name in ("spconv", "transformers", "diffusers", "gradio", "trimesh"):
        with contextlib.suppress(Exception):
            out[name] = __import__(name).__version__
    return out


class Report(dict[str, Any]):
    """The JSON report, written to `path` after every step, so a run cut short still leaves what it measured."""

    def __init__(self, path: Path | None, **fields: Any) -> None:
        super().__init__(**fields)
        self.path = path

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self, indent=2) + "\n")


def run(args: argparse.Namespace) -> Report:
    report = Report(args.out, date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv), **versions())
    models = None
    if not args.smoke:
        models = build_models(args.models, args.llama_tokenizer)
        report["model_build_s"] = models.pop("seconds")
        report["stand_ins"] = ["safety classifiers: tiny builtin", "rembg u2net: one-layer ONNX graph"]
    with contextlib.nullcontext(str(args.work)) if args.work else tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        work = Path(tmp)
        env = appliance_env(work, models)
        base = f"http://127.0.0.1:{env['TRELLIS_PORT']}"
        with GpuPeaks() as peaks:
            try:
                with started(env, work / "start.log") as ready:
                    report["ready_s"] = ready
                    image = test_image()
                    report["infer_untextured"] = measure_infer(base, image, args.steps)
                    report["gpu_peak"] = peaks.report()
                    textured = 0 if args.smoke else args.textured_runs
                    report["jobs"] = measure_jobs(base, image, args.steps, textured)
                    report["gpu_peak"] = peaks.report()
                    ui = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}"
                    report["studio"] = drive_studio(ui, args.steps, no_texture=True)
            except Exception as e:
                report["error"] = f"{type(e).__name__}: {e}"
                report["logs"] = _log_tails(work)
        report["gpu_peak"] = peaks.report()
    return report


def _log_tails(work: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace")[-3000:] for p in sorted(work.rglob("*.log")) if p.stat().st_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("/data/e2e-models"), help="folder the models are built in")
    p.add_argument("--llama-tokenizer", type=Path, help="Meta's llama3 tokenizer.model (from the llama-models wheel)")
    p.add_argument("--steps", type=int, default=STEPS, help="sampling steps of both TRELLIS stages")
    p.add_argument("--textured-runs", type=int, default=TEXTURED_RUNS, help="textured GLB jobs to time")
    p.add_argument("--smoke", action="store_true", help="CPU plumbing check: tiny profile, relief backend")
    p.add_argument("--out", type=Path, help="also write the JSON here (after every step, so a cut run leaves some)")
    p.add_argument("--work", type=Path, help="keep data and logs here (default: a temporary folder)")
    args = p.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    sys.exit(1 if "error" in report else 0)


if __name__ == "__main__":
    main()
