"""Does each GPU memory profile fit its card? Emulates 16/24/32/48 GB cards on a bigger GPU and measures.

    python bench/vram_fit.py                         # every profile, on cuda:0
    python bench/vram_fit.py --profiles 16gb,24gb --llm-model meta-llama/Llama-3.1-8B-Instruct

For each profile the card's memory (`CARD_GIB`, as torch reports such cards) is split between the two model
services as `vram.py` budgets it; each runs in its own process capped with
`torch.cuda.set_per_process_memory_fraction(budget / device total)`, both at once (so the VRAM lease is
exercised), through the services' own loading code with `VRAM_PROFILE=<profile>`:

- LLM process: load (quantised per the plan), warm up, one scene-plan answer (`--plan-tokens` tokens);
- 3D process: load SANA + the 3D backend, 4 images in one request, one image-to-3D job (TRELLIS when it is
  installed, else the step is reported as not run).

Prints one JSON object: per profile and process the peak allocated/reserved memory, seconds per step and
pass/fail. The cap covers PyTorch's allocator only; each process's CUDA context (~0.5 GiB) comes on top, as on a
real card. Without CUDA it prints `{"ran": false, ...}` with the plans and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vram import PLANS, describe  # noqa: E402

CARD_GIB = {"16gb": 15.6, "24gb": 23.5, "32gb": 31.8, "48gb": 47.5}
LLM_WEIGHTS_GIB = {"bf16": 16.0, "8bit": 8.5, "4bit": 5.5}  # Llama-3.1-8B
KV_GIB_PER_TOKEN = 128 / 2**20  # 128 KiB per token for Llama-3.1-8B
LLM_ACTIVATIONS_GIB = 1.0
SCENE_PROMPT = "Plan a cosy reading corner: list up to 6 objects with a one-line visual description each."
IMAGE_PROMPT = "a wooden armchair with a green cushion, studio lighting, plain background"


def llm_budget_gib(profile: str) -> float:
    """The LLM process's share of the card: weights + preallocated KV cache + activations."""
    plan = PLANS[profile]  # type: ignore[index]
    tokens = (plan.llm_max_batch_size or 64) * (plan.llm_max_context or 4096)
    return LLM_WEIGHTS_GIB[plan.llm_weights] + tokens * KV_GIB_PER_TOKEN + LLM_ACTIVATIONS_GIB


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


def peaks(device: str) -> dict[str, float]:
    import torch

    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
    }


def run_llm(settings: Any, plan_tokens: int) -> dict[str, Any]:
    import threading

    from nim_llm.sampling import SamplingParams
    from nim_llm.sequence import ErrorEvent, FinishEvent
    from nim_llm.startup import build_engine, warm_up
    from vram import llm_plan

    settings = llm_plan(settings).limit_llm(settings)
    steps: dict[str, Any] = {}
    engine = timed(steps, "load", lambda: build_engine(settings))
    if engine is None:
        return steps
    engine.start()
    timed(steps, "warm_up", lambda: warm_up(engine, settings))

    def scene_plan() -> None:
        done, outcome = threading.Event(), []
        prompt = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": SCENE_PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]

        def sink(event: Any) -> None:
            if isinstance(event, FinishEvent | ErrorEvent):
                outcome.append(event)
                done.set()

        engine.submit(list(prompt), SamplingParams(max_tokens=plan_tokens), sink)
        if not done.wait(settings.llm_request_timeout_s) or isinstance(outcome[0], ErrorEvent):
            raise RuntimeError(f"scene plan failed: {outcome[0].error if outcome else 'timeout'}")

    timed(steps, "scene_plan", scene_plan)
    engine.stop()
    return steps


def run_3d(settings: Any) -> dict[str, Any]:
    import asyncio

    from nim_trellis.schemas import ImageGenerationRequest
    from nim_trellis.service import TrellisService

    steps: dict[str, Any] = {}
    service = TrellisService(settings)
    service.queue.start()
    timed(steps, "load", service.load_models)
    steps["health"] = service.health().model_dump()
    request = ImageGenerationRequest(prompt=IMAGE_PROMPT, n=4, seed=1)
    images = timed(steps, "images_4", lambda: asyncio.run(service.generate_images(request)))
    if settings.backend_3d != "trellis":
        steps["image_to_3d"] = {"ok": None, "note": "TRELLIS is not installed here: 3D not run"}
    elif images is not None:
        timed(steps, "image_to_3d", lambda: _one_3d(service, images.data[0].b64_json))
    service.stop()
    return steps


def _one_3d(service: Any, image_b64: str) -> None:
    import asyncio

    from nim_trellis.schemas import InferRequest

    result = asyncio.run(service.infer(InferRequest(image=image_b64)))
    if result.artifacts[0].finishReason != "SUCCESS":
        raise RuntimeError("the 3D job did not succeed (see the 3D service log)")


def worker(args: argparse.Namespace) -> None:
    from config import Settings

    overrides: dict[str, Any] = {"profile": "gpu", "vram_profile": args.profile}
    if args.llm_model:
        overrides["llm_model"] = args.llm_model
    if args.role == "3d" and not _trellis_installed():
        overrides["backend_3d"] = "relief"
    settings = Settings(**overrides)
    report: dict[str, Any] = {"role": args.role, **cap_memory(args.budget_gib, args.device)}
    report["steps"] = run_llm(settings, args.plan_tokens) if args.role == "llm" else run_3d(settings)
    report.update(peaks(args.device))
    report["pass"] = all(s.get("ok") is not False for s in report["steps"].values() if isinstance(s, dict))
    print(json.dumps(report, default=str))


def _trellis_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trellis") is not None


# --- orchestrator -------------------------------------------------------------------------------------------
def fit_profile(profile: str, args: argparse.Namespace) -> dict[str, Any]:
    card = CARD_GIB[profile]
    budgets = {"llm": llm_budget_gib(profile), "3d": card - llm_budget_gib(profile)}
    procs = {
        role: subprocess.Popen(
            [sys.executable, __file__, "--worker", role, "--profile", profile, "--budget-gib", str(budget)]
            + ["--device", args.device, "--plan-tokens", str(args.plan_tokens)]
            + (["--llm-model", args.llm_model] if args.llm_model else []),
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for role, budget in budgets.items()
    }
    results: dict[str, Any] = {}
    for role, proc in procs.items():
        out, _ = proc.communicate(timeout=args.timeout_s)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        results[role] = json.loads(lines[-1]) if lines else {"pass": False, "error": f"exit code {proc.returncode}"}
    return {
        "card_gib": card,
        "plan": describe(PLANS[profile]),  # type: ignore[index]
        "processes": results,
        "pass": all(r.get("pass") for r in results.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default="16gb,24gb,32gb,48gb")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--llm-model", default="")
    p.add_argument("--plan-tokens", type=int, default=512)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--worker", choices=["llm", "3d"], dest="role")
    p.add_argument("--profile")
    p.add_argument("--budget-gib", type=float)
    args = p.parse_args()
    if args.role:
        worker(args)
        return
    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    import torch

    if not torch.cuda.is_available():
        print(
            json.dumps(
                {"ran": False, "reason": "CUDA is not available", "plans": {x: describe(PLANS[x]) for x in profiles}}
            )
        )
        return
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = {
        "ran": True,
        "date": started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "gpu": torch.cuda.get_device_name(torch.device(args.device)),
        "profiles": {x: fit_profile(x, args) for x in profiles},
    }
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
