"""Does each GPU memory profile fit its card? Emulates 16/24/32/48 GB cards on a bigger GPU and measures.

    python bench/vram_fit.py                         # every profile, on cuda:0, the gpu profile's hub models
    python bench/vram_fit.py --profiles 16gb,24gb --llm-model meta-llama/Llama-3.1-8B-Instruct
    python bench/vram_fit.py --random-weights /data/vram-fit-models   # no hub access needed (see below)
    python bench/vram_fit.py --smoke --profiles 16gb # CPU, tiny models: proves this script's plumbing (CI)

For each profile the card's memory (`CARD_GIB`, as torch reports such cards) is split between the two model
services as `servicekit/vram.py` budgets it; each runs in its own process capped with
`torch.cuda.set_per_process_memory_fraction(budget / device total)`, both at once (so the VRAM lease is
exercised), through the services' own loading code with `VRAM_PROFILE=<profile>`:

- LLM process: load (quantised per the plan), warm up, one scene-plan answer of `--plan-tokens` tokens (EOS
  ignored, so every run decodes the same count); reports which engine ran (`static`, or `eager`, e.g. for
  quantised weights), the weights' size as loaded, and the answer's decode tokens/s after its first token;
- 3D process: load SANA + the 3D backend, 4 images in one request, one image-to-3D job (TRELLIS when it is
  installed, else `"trellis": "not run: ..."`, with the relief backend loaded in its place).

`--random-weights DIR` is for GPU machines without the Hugging Face hub: it builds once under DIR (skipped when
present) Llama-3.1-8B and SANA-Sprint 0.6B (transformer, Gemma-2 2B text encoder, DC-AE VAE) with their exact
architectures and random bf16 weights (`bench/random_models.py`), and runs the workers on those folders with
HF_HUB_OFFLINE. Memory and speed depend on shapes, not weight values. The safety classifiers are then the tiny
builtin stand-ins, so the real ones (≈ 0.6 GB in fp32 on the 3D process's GPU) are not in its numbers.

`--smoke` runs the same workers (one process per role, both at once) on CPU with the `tiny` profile's builtin
models: no memory cap, peaks reported as null, and `plan_applies: false` because VRAM plans do not apply on CPU.

Prints one JSON object: per profile and process the peak allocated/reserved memory, seconds per step and
pass/fail. The cap covers PyTorch's allocator only; each process's CUDA context (~0.5 GiB) comes on top, as on a
real card. Without CUDA (and without `--smoke`) it prints `{"ran": false, ...}` with the plans and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servicekit.vram import PLANS, describe

ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from config import Settings

CARD_GIB = {"16gb": 15.6, "24gb": 23.5, "32gb": 31.8, "48gb": 47.5}
# Llama-3.1-8B as loaded (8.03 B parameters; bitsandbytes keeps the embeddings and lm_head in bf16). The report
# gives the measured size (`llm_weights_gib`).
LLM_WEIGHTS_GIB = {"bf16": 14.96, "8bit": 8.5, "4bit": 5.5}
# Each process's CUDA context and library workspaces, outside PyTorch's allocator and so outside its cap; taken off
# the card before it is split, so both processes together stay within the card. `nvml_used_gib` measures it.
CUDA_CONTEXT_GIB = 0.5
KV_GIB_PER_TOKEN = 128 / 2**20  # 128 KiB per token for Llama-3.1-8B
# Above weights and KV cache: activations and allocator slack on the eager engine (4-bit weights); the static
# engine adds compile workspaces and the CUDA graphs' memory pools for every decode shape (its load ran out of
# memory with 1 GiB on an H200 at 24gb, 32gb and 48gb).
LLM_OVERHEAD_GIB = {"eager": 1.0, "static": 3.0}
PLAN_TOKENS = 512
SMOKE_PLAN_TOKENS = 16  # the tiny model on CPU: enough to exercise decoding, fast enough for CI
SCENE_PROMPT = "Plan a cosy reading corner: list up to 6 objects with a one-line visual description each."
IMAGE_PROMPT = "a wooden armchair with a green cushion, studio lighting, plain background"
TRELLIS_NOT_RUN = "not run: TRELLIS is not installed here; the relief backend (CPU, no model) was loaded instead"


def llm_budget_gib(profile: str) -> float:
    """The LLM process's share of the card: weights + preallocated KV cache + activations."""
    plan = PLANS[profile]  # type: ignore[index]
    tokens = (plan.llm_max_batch_size or 64) * (plan.llm_max_context or 4096)
    engine = "eager" if plan.llm_weights == "4bit" else "static"  # bitsandbytes weights run on the eager engine
    return LLM_WEIGHTS_GIB[plan.llm_weights] + tokens * KV_GIB_PER_TOKEN + LLM_OVERHEAD_GIB[engine]


# --- worker processes ----------------------------------------------------------------------------------------
def cap_memory(budget_gib: float, device: str) -> dict[str, float]:
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib / total), torch.device(device))
    torch.cuda.reset_peak_memory_stats(device)
    return {"budget_gib": round(budget_gib, 2), "device_total_gib": round(total, 2)}


def timed(steps: dict[str, Any], name: str, fn: Any) -> Any:
    started = time.perf_counter()
    try:
        value = fn()
        steps[name] = {"ok": True, "s": round(time.perf_counter() - started, 3)}
        return value
    except Exception as err:  # a failed step is a measurement, not a crash
        steps[name] = {
            "ok": False,
            "s": round(time.perf_counter() - started, 3),
            "error": f"{type(err).__name__}: {err}",
        }
        return None


def peaks(device: str) -> dict[str, float | None]:
    import torch

    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        "nvml_used_gib": nvml_used_gib(device),
    }


def nvml_used_gib(device: str) -> float | None:
    """This process's whole footprint on the GPU as the driver sees it (context and non-PyTorch memory included),
    at the end of the run: the cached blocks are still reserved then, so it is close to the peak footprint."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return round(proc.usedGpuMemory / 2**30, 3)
    except Exception:  # NVML missing or not allowed (containers often hide other pids): not measured
        return None
    return None


def run_llm(settings: Any, plan_tokens: int) -> dict[str, Any]:
    from nim_llm.llama_step import unsupported_reason
    from nim_llm.sampling import SamplingParams
    from nim_llm.startup import build_engine, engine_kind, generate_once, warm_up
    from servicekit.vram import llm_plan

    plan = llm_plan(settings)
    steps: dict[str, Any] = {}
    report: dict[str, Any] = {"plan_applies": plan.applies, "steps": steps}
    engine = timed(steps, "load", lambda: build_engine(settings, plan))
    if engine is None:
        return report
    # build_engine chose the same way (the choice depends only on the settings and the loaded model).
    report["engine"] = engine_kind(settings, engine.model)
    report["engine_note"] = unsupported_reason(engine.model)
    report["llm_weights_gib"] = round(engine.model.get_memory_footprint() / 2**30, 3)
    engine.start()
    timed(steps, "warm_up", lambda: warm_up(engine, settings))

    def scene_plan() -> dict[str, Any]:
        messages = [{"role": "user", "content": SCENE_PROMPT}]
        params = SamplingParams(max_tokens=plan_tokens, ignore_eos=True)
        return decode_speed(generate_once(engine, messages, params, settings.llm_request_timeout_s, "scene plan"))

    speed = timed(steps, "scene_plan", scene_plan)
    if speed is not None:
        steps["scene_plan"].update(speed)
    engine.stop()
    return report


def decode_speed(finish: Any) -> dict[str, Any]:
    """Tokens of one answer, its time to first token, and decode tokens/s after the first (prefill excluded)."""
    first = finish.first_token_s if finish.first_token_s is not None else finish.submitted_s
    decode_s = finish.finish_s - first
    tokens = finish.completion_tokens
    return {
        "tokens": tokens,
        "ttft_s": round(first - finish.submitted_s, 3),
        "decode_tok_s": round((tokens - 1) / decode_s, 1) if tokens > 1 and decode_s > 0 else None,
    }


def run_3d(settings: Any) -> dict[str, Any]:
    import asyncio

    from nim_trellis.protocol import ImageGenerationRequest
    from nim_trellis.service import TrellisService

    steps: dict[str, Any] = {}
    service = TrellisService(settings)
    report: dict[str, Any] = {"plan_applies": service.vram.applies, "steps": steps}
    service.queue.start()
    timed(steps, "load", service.load_models)
    report["health"] = service.health().model_dump()
    request = ImageGenerationRequest(prompt=IMAGE_PROMPT, n=4, seed=1)
    images = timed(steps, "images_4", lambda: asyncio.run(service.images.generate_images(request)))
    if settings.backend_3d != "trellis":
        report["trellis"] = TRELLIS_NOT_RUN
        steps["image_to_3d"] = {"ok": None, "s": None, "note": TRELLIS_NOT_RUN}
    elif images is None:
        report["trellis"] = "not run: no image to start from (images_4 failed)"
    else:
        report["trellis"] = "run (see steps.image_to_3d)"
        timed(steps, "image_to_3d", lambda: _one_3d(service, images.data[0].b64_json))
    service.stop()
    return report


def _one_3d(service: Any, image_b64: str) -> None:
    import asyncio

    from nim_trellis.protocol import InferRequest

    result = asyncio.run(service.infer(InferRequest(image=image_b64)))  # a failure raises with its reason
    if result.finish_reason != "SUCCESS":
        raise RuntimeError(f"the 3D job did not succeed: {result.finish_reason}")


def worker_settings(args: argparse.Namespace) -> Settings:
    """The services' settings for this worker: the gpu profile (or tiny for --smoke) with the bench's overrides."""
    from config import BUILTIN_TINY_IMAGE_CLASSIFIER, BUILTIN_TINY_PROMPT_CLASSIFIER, Settings

    overrides: dict[str, Any] = {"vram_profile": args.profile}
    if args.smoke:
        # No .env either: a GPU device set there must not move the smoke run off the CPU.
        overrides.update(profile="tiny", llm_device="cpu", imagegen_device="cpu", _env_file=None)
    else:
        overrides.update(profile="gpu", llm_device=args.device, imagegen_device=args.device)
    if args.llm_model:
        overrides["llm_model"] = args.llm_model
    if args.random_weights:
        from bench.random_models import llama_folder, sana_folder

        overrides.update(
            llm_model=str(llama_folder(args.random_weights, args.random_weights_layers)),
            imagegen_model=str(sana_folder(args.random_weights)),
            hf_hub_offline=True,
            safety_prompt_model=BUILTIN_TINY_PROMPT_CLASSIFIER,
            safety_image_model=BUILTIN_TINY_IMAGE_CLASSIFIER,
        )
    if args.role == "3d" and not _trellis_installed():
        overrides["backend_3d"] = "relief"
    return Settings(**overrides)


def worker(args: argparse.Namespace) -> None:
    settings = worker_settings(args)
    report: dict[str, Any] = {"role": args.role}
    if args.smoke:  # no GPU: nothing to cap or to measure
        report.update(budget_gib=None, device_total_gib=None)
    else:
        report.update(cap_memory(args.budget_gib, args.device))
    if args.role == "llm":
        report["models"] = {"llm": settings.llm_model}
        report.update(run_llm(settings, args.plan_tokens))
    else:
        report["models"] = {
            "imagegen": settings.imagegen_model,
            "backend_3d": settings.backend_3d,
            "safety": [settings.safety_prompt_model, settings.safety_image_model],
        }
        report.update(run_3d(settings))
    report.update(
        peaks(args.device)
        if not args.smoke
        else dict.fromkeys(("peak_allocated_gib", "peak_reserved_gib", "nvml_used_gib"))
    )
    report["pass"] = all(s.get("ok") is not False for s in report["steps"].values())
    print(json.dumps(report, default=str))


def _trellis_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trellis") is not None


# --- orchestrator -------------------------------------------------------------------------------------------
def fit_profile(profile: str, args: argparse.Namespace) -> dict[str, Any]:
    card = CARD_GIB[profile]
    budgets = {"llm": llm_budget_gib(profile), "3d": card - 2 * CUDA_CONTEXT_GIB - llm_budget_gib(profile)}
    common = ["--profile", profile, "--device", args.device, "--plan-tokens", str(args.plan_tokens)]
    if args.smoke:
        common.append("--smoke")
    if args.llm_model:
        common += ["--llm-model", args.llm_model]
    if args.random_weights:
        common += ["--random-weights", str(args.random_weights)]
        if args.random_weights_layers is not None:
            common += ["--random-weights-layers", str(args.random_weights_layers)]
    env = dict(os.environ)
    if args.smoke or args.random_weights:
        env["HF_HUB_OFFLINE"] = "1"  # nothing may reach for the hub, not even a library's version check
    with tempfile.TemporaryDirectory(prefix=f"vram-fit-{profile}-") as run_dir:
        env["RUN_DIR"] = run_dir  # the two workers' own VRAM lease, apart from any appliance on this machine
        procs = {
            role: subprocess.Popen(
                [sys.executable, __file__, "--worker", role, *common]
                + ([] if args.smoke else ["--budget-gib", str(budget)]),
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for role, budget in budgets.items()
        }
        results = {role: _result(proc, args.timeout_s) for role, proc in procs.items()}
    return {
        "card_gib": card,
        "plan": describe(PLANS[profile]),  # type: ignore[index]
        "plan_applies": all(r.get("plan_applies") for r in results.values()),
        "processes": results,
        "pass": all(r.get("pass") for r in results.values()),
    }


def _result(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The worker's JSON line, or why there is none."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"pass": False, "error": f"no result within {timeout_s:g}s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"pass": False, "error": f"exit code {proc.returncode}"}


def build_random_weights(args: argparse.Namespace) -> None:
    """The stand-in models under DIR (once), built in a process of their own so that none of the build's memory
    (host or GPU, CUDA context included) stays with this one while the workers measure."""
    command = [sys.executable, str(ROOT / "bench" / "random_models.py"), str(args.random_weights)]
    command += ["--device", args.device]
    if args.random_weights_layers is not None:
        command += ["--llama-layers", str(args.random_weights_layers)]
    subprocess.run(command, check=True, stdout=sys.stderr)  # stdout carries the JSON report alone


def notes(args: argparse.Namespace) -> list[str]:
    """What the reader must know to trust (or not) the numbers of this run."""
    if args.smoke:
        return ["smoke: CPU plumbing check with the tiny profile's models; no memory cap or peaks, VRAM plans off"]
    said = []
    if args.random_weights:
        said.append(
            "random weights, exact architectures (bench/random_models.py); the safety classifiers are the tiny "
            "builtin stand-ins, so the real ones (about 0.6 GB in fp32 on the 3D process's GPU) are not measured"
        )
    if args.random_weights_layers is not None:
        said.append(f"the LLM has {args.random_weights_layers} layers instead of 32: a plumbing check, not a fit")
    if not _trellis_installed():
        said.append("TRELLIS is not installed: the 3D step was not run, so the 3D process's peak is SANA's only")
    return said


def mode(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "random-weights" if args.random_weights else "hub"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default="16gb,24gb,32gb,48gb")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--llm-model", default="")
    p.add_argument("--random-weights", type=Path, metavar="DIR", help="exact architectures, random weights, no hub")
    p.add_argument("--random-weights-layers", type=int, help=argparse.SUPPRESS)  # a shallower Llama, for checks
    p.add_argument("--smoke", action="store_true", help="CPU, tiny profile's models: checks the plumbing")
    p.add_argument(
        "--plan-tokens", type=int, help=f"scene-plan tokens (default {PLAN_TOKENS}, smoke {SMOKE_PLAN_TOKENS})"
    )
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--worker", choices=["llm", "3d"], dest="role")
    p.add_argument("--profile")
    p.add_argument("--budget-gib", type=float)
    args = p.parse_args()
    if args.smoke and (args.random_weights or args.llm_model):
        p.error("--smoke runs the tiny profile's builtin models; leave out --random-weights and --llm-model")
    if args.random_weights and args.llm_model:
        p.error("--random-weights picks the LLM; leave out --llm-model")
    if args.plan_tokens is None:
        args.plan_tokens = SMOKE_PLAN_TOKENS if args.smoke else PLAN_TOKENS
    if args.role:
        worker(args)
        return
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            json.dumps(
                {"ran": False, "reason": "CUDA is not available", "plans": {x: describe(PLANS[x]) for x in profiles}}
            )
        )
        return
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.random_weights:
        build_random_weights(args)
    report = {
        "ran": True,
        "date": started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mode": mode(args),
        "notes": notes(args),
        "gpu": None if args.smoke else torch.cuda.get_device_name(torch.device(args.device)),
        "profiles": {x: fit_profile(x, args) for x in profiles},
    }
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
