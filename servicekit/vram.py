"""GPU memory profiles: which plan fits the card, and what each plan changes (issue 7).

`VRAM_PROFILE=auto` reads the GPU's total memory at start (`detect_total_gib`) and picks a profile
(`choose_profile`); a named profile is taken as given. Both model services resolve the same plan
(`resolve_plan`) and report it in `/v1/health/ready` (`vram_profile`, `vram_reason`, `vram_lowered`), which the UI
header shows. When the models run on CPU the plan does not apply and nothing changes. torch is imported lazily and
never by the UI.

Budgets (GiB). Measured on an H200 emulating each card (`bench/vram_fit.py --random-weights`, 2026-11-29, raw
JSON in `bench/results/`; README "GPU memory profiles"); TRELLIS figures are estimates, it has not run there.

- Llama-3.1-8B weights as loaded: bf16 15.0, 8-bit (weight-only int8, `nim_llm/int8.py`) 8.5, 4-bit (bitsandbytes
  NF4) 5.2. KV cache: 128 KiB per token, so one 4096-token slot = 0.5 GiB, preallocated `batch × context` by the
  static engine, which with compile workspaces and CUDA-graph pools needs about 3 more. Process footprint (driver):
  16gb 6.6 (eager), 24gb 12.8, 32gb 15.3, 48gb 25.8. Decode: 10 / 90 / 88 / 186 tok/s (bitsandbytes weights run
  on the eager engine; LLM.int8 gave 5 tok/s, hence our int8).
- SANA-Sprint 0.6B + Gemma-2 2B text encoder + DC-AE: offloaded (diffusers `enable_model_cpu_offload`) peak 5.5
  reserved (+0.8 context), 4 images at 1024² in 10 s; resident peak 10.4 reserved, 4 images in 4.3 s.
- TRELLIS-image-large ≈ 3 of weights + DINOv2 ≈ 1; peaks in the decoders and the texture bake (which scales with
  texture area) are not measured yet.
- SANA and TRELLIS share one worker, so they never run together; the VRAM lease (`servicekit/vram_lease.py`) makes a 3D
  job and an LLM answer take turns where the card cannot hold both peaks.

| profile   | cards (GiB seen)      | LLM weights | LLM batch × context | SANA     | TRELLIS       | texture | lease |
|-----------|-----------------------|-------------|---------------------|----------|---------------|---------|-------|
| 16gb      | 4080, 5080 (15.6)     | 4-bit       | 4 × 4096 (2 GiB KV) | offload  | per stage     | 512     | yes   |
| 24gb      | 4090 (23.5)           | 8-bit       | 4 × 4096 (2 GiB KV) | offload  | per stage     | 1024    | yes   |
| 32gb      | 5090 (31.8)           | 8-bit       | 8 × 4096 (4 GiB)    | offload  | resident      | 1024    | no    |
| 48gb      | RTX 6000 Ada (47.5)   | bf16        | 16 × 4096 (8 GiB)   | GPU      | resident      | 1024    | no    |
| unlimited | 80 GB and up          | bf16        | settings            | GPU      | resident      | setting | no    |

Reasoning: a 3D job runs while SANA is offloaded (or beside it at 48gb) and gets the card minus the LLM's footprint
and one context: 8.2 at 16gb (texture 512, models per stage, the lease keeping LLM activations out), 9.9 at 24gb,
15.7 at 32gb, 14.8 at 48gb. int8 does not fit 16gb: the static engine's ~12 would leave too little for SANA.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger("vram")

ProfileName = Literal["16gb", "24gb", "32gb", "48gb", "unlimited"]
LlmWeights = Literal["bf16", "8bit", "4bit"]
Placement = Literal["gpu", "offload"]

# Smallest total memory (GiB, as torch reports it) that still counts as a card of each class, largest first.
# Cards report a little less than their nominal size (a 24 GB 4090 shows 23.5 GiB), hence the margins.
CLASS_FLOORS: tuple[tuple[ProfileName, float], ...] = (
    ("unlimited", 64.0),
    ("48gb", 40.0),
    ("32gb", 28.0),
    ("24gb", 20.0),
    ("16gb", 0.0),
)
SMALLEST_SUPPORTED_GIB = 14.5
FULL_TEXTURE = 1024  # TEXTURE_SIZE's default: a cap below it lowers quality, one at it only bounds larger settings
LEANER: dict[str, str] = {"unlimited": "48gb", "48gb": "32gb", "32gb": "24gb", "24gb": "16gb"}


@dataclass(frozen=True)
class LlmSize:
    """How large the LLM engine is built: batch slots, context tokens (None: the model's own), tokens per slot."""

    max_batch_size: int
    max_context: int | None
    slot_tokens: int


@dataclass(frozen=True)
class VramPlan:
    """What one profile changes. `None` limits keep the settings' own values."""

    profile: ProfileName
    reason: str = ""
    applies: bool = True  # False when the models run on CPU: nothing changes
    llm_weights: LlmWeights = "bf16"
    llm_max_batch_size: int | None = None
    llm_max_context: int | None = None
    sana_placement: Placement = "gpu"
    trellis_low_vram: bool = False  # models moved to the GPU per stage
    texture_size: int | None = None
    lease: bool = False  # 3D jobs and LLM answers take turns on the GPU

    @property
    def lowered(self) -> list[str]:
        """The quality or speed knobs this plan turns down, in words for the UI."""
        if not self.applies:
            return []
        knobs = {"8bit": ["8-bit LLM"], "4bit": ["4-bit LLM"]}.get(self.llm_weights, [])
        if self.llm_max_batch_size:
            knobs.append(f"LLM batch {self.llm_max_batch_size}")
        if self.llm_max_context:
            knobs.append(f"LLM context {self.llm_max_context}")
        if self.sana_placement == "offload":
            knobs.append("images offloaded when idle")
        if self.trellis_low_vram:
            knobs.append("3D models loaded per stage")
        if self.texture_size:
            knobs.append(
                f"texture {self.texture_size}" if self.texture_size < FULL_TEXTURE else f"texture ≤ {self.texture_size}"
            )
        if self.lease:
            knobs.append("LLM and 3D take turns")
        return knobs

    def health_fields(self) -> dict[str, Any]:
        """The fields both services add to their `/v1/health/ready` body."""
        return {
            "vram_profile": self.profile,
            "vram_reason": self.reason,
            "vram_applies": self.applies,
            "vram_lowered": self.lowered,
        }

    def texture(self, configured: int) -> int:
        return min(configured, self.texture_size) if self.applies and self.texture_size else configured

    def llm_size(self, settings: Settings) -> LlmSize:
        """The LLM engine's size: what the settings ask for, capped by this plan (the settings stay as they are)."""
        batch, context, slot = int(settings.llm_max_batch_size or 1), settings.llm_max_context, settings.llm_slot_tokens
        if self.applies and self.llm_max_batch_size:
            batch = min(batch, self.llm_max_batch_size)
        if self.applies and self.llm_max_context:
            context, slot = min(context or self.llm_max_context, self.llm_max_context), min(slot, self.llm_max_context)
        return LlmSize(max_batch_size=batch, max_context=context, slot_tokens=slot)

    @property
    def int8_llm(self) -> bool:
        """8-bit LLM weights: our own weight-only int8 (`nim_llm/int8.py`), which the static engine compiles."""
        return self.applies and self.llm_weights == "8bit"

    def quantization_config(self) -> Any | None:
        """transformers' `BitsAndBytesConfig` for 4-bit NF4 weights, else None (needs `bitsandbytes` on CUDA)."""
        if not self.applies or self.llm_weights != "4bit":
            return None
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)

    def not_applied(self) -> VramPlan:
        return replace(self, applies=False)

    def oom_advice(self) -> str:
        """What to do after a leaner retry also ran out of memory."""
        if not self.applies:
            return "free GPU memory used by other programs or choose a smaller VRAM_PROFILE"
        leaner = LEANER.get(self.profile)
        if leaner:
            return f"set VRAM_PROFILE={leaner} (now {self.profile}) or free GPU memory used by other programs"
        return "VRAM_PROFILE=16gb is the leanest profile: free GPU memory used by other programs or use a larger GPU"


PLANS: dict[ProfileName, VramPlan] = {
    "16gb": VramPlan(
        "16gb", llm_weights="4bit", llm_max_batch_size=4, llm_max_context=4096, sana_placement="offload",
        trellis_low_vram=True, texture_size=512, lease=True,
    ),
    "24gb": VramPlan(
        "24gb", llm_weights="8bit", llm_max_batch_size=4, llm_max_context=4096, sana_placement="offload",
        trellis_low_vram=True, texture_size=1024, lease=True,
    ),
    "32gb": VramPlan(
        "32gb", llm_weights="8bit", llm_max_batch_size=8, llm_max_context=4096, sana_placement="offload",
        texture_size=1024,
    ),
    "48gb": VramPlan("48gb", llm_max_batch_size=16, llm_max_context=4096, texture_size=1024),
    "unlimited": VramPlan("unlimited"),
}  # fmt: skip


def choose_profile(total_gib: float) -> tuple[ProfileName, str]:
    """(profile, reason) for a GPU with `total_gib` of memory as torch reports it."""
    for name, floor in CLASS_FLOORS:
        if total_gib >= floor:
            reason = f"auto: the GPU has {total_gib:.1f} GiB"
            if total_gib < SMALLEST_SUPPORTED_GIB:
                reason += " (below the 16 GB class; out-of-memory failures are likely)"
            return name, reason
    raise AssertionError("the last floor is 0")


def detect_total_gib(device: str = "cuda") -> float | None:
    """Total memory of the CUDA device in GiB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.partition(":")[2] or torch.cuda.current_device())
    return torch.cuda.get_device_properties(index).total_memory / 2**30


def plan_for(profile: ProfileName, reason: str) -> VramPlan:
    return replace(PLANS[profile], reason=reason)


def resolve_plan(setting: str, device: str | None, total_gib: float | None = None) -> VramPlan:
    """The plan for VRAM_PROFILE=`setting` on `device`; `total_gib` overrides detection (tests, bench)."""
    if not str(device or "cpu").startswith("cuda"):
        return plan_for("unlimited", f"the models run on {device or 'cpu'}: no GPU memory to fit").not_applied()
    if setting != "auto":
        return plan_for(setting, f"VRAM_PROFILE={setting}")  # type: ignore[arg-type]
    total = total_gib if total_gib is not None else detect_total_gib(str(device))
    if total is None:
        return plan_for("unlimited", "CUDA is not available: no GPU memory to fit").not_applied()
    return plan_for(*choose_profile(total))


def llm_plan(settings: Settings) -> VramPlan:
    return resolve_plan(settings.vram_profile, settings.llm_device)


def device_3d(settings: Settings) -> str:
    """The device the 3D service's models use: CUDA when TRELLIS or a CUDA image model is configured."""
    if settings.backend_3d == "trellis":
        return "cuda"
    return str(settings.imagegen_device or "cpu") if settings.imagegen_model else "cpu"


def plan_3d(settings: Settings) -> VramPlan:
    return resolve_plan(settings.vram_profile, device_3d(settings))


# --- out of memory ---------------------------------------------------------------------------------------------
def is_cuda_oom(err: BaseException) -> bool:
    """Whether `err` is torch's CUDA out-of-memory error (never imports torch: if it is not loaded, it is not)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.cuda.OutOfMemoryError)


def free_gpu_memory() -> None:
    """Collect garbage (tensors held by the failed call's frames) and return cached blocks to the driver."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(plan: VramPlan) -> dict[str, Any]:
    """The plan as plain data (bench output, logs)."""
    return {**asdict(plan), "lowered": plan.lowered}
