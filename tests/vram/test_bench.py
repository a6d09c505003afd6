"""bench/vram_fit.py: says plainly when it cannot run, runs its whole plumbing on CPU (`--smoke`), and its
random-weight stand-ins (bench/random_models.py) have the real models' shapes (checked on the meta device: no
weights are allocated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT_S = 120  # it takes well under a minute on 2 cores; the margin is for a loaded CI machine


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


@pytest.mark.slow
def test_vram_fit_smoke_runs_both_workers_on_cpu(model_cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CACHE_DIR": str(model_cache), "DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "vram_fit.py"), "--smoke", "--profiles", "16gb"],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ran"] is True and report["mode"] == "smoke"
    fit = report["profiles"]["16gb"]
    assert fit["plan_applies"] is False and fit["pass"] is True, json.dumps(fit, indent=1)[-3000:]
    llm, three_d = fit["processes"]["llm"], fit["processes"]["3d"]
    for process in (llm, three_d):
        assert process["pass"] is True and process["plan_applies"] is False
        assert process["peak_allocated_gib"] is None and process["budget_gib"] is None
        assert all({"ok", "s"} <= set(step) for step in process["steps"].values())
    assert llm["steps"]["scene_plan"]["ok"] is True and llm["steps"]["scene_plan"]["tokens"] > 0
    assert llm["engine"] == "eager"  # CPU: the static engine is for CUDA
    assert three_d["steps"]["images_4"]["ok"] is True
    assert three_d["trellis"].startswith("not run") and three_d["steps"]["image_to_3d"]["ok"] is None


def test_random_model_configs_have_the_real_shapes() -> None:
    import torch
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Model, LlamaForCausalLM

    from bench.random_models import (
        dc_ae_kwargs,
        gemma2_2b_config,
        llama_config,
        llama_folder,
        sana_transformer_kwargs,
    )
    from bench.vram_fit import KV_GIB_PER_TOKEN
    from nim_trellis.tiny_models import byte_fallback_gemma_tokenizer

    llama = llama_config()
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_key_value_heads) == (4096, 32, 8)
    assert llama.vocab_size == 128256 and llama_config(layers=2).num_hidden_layers == 2
    head_dim = llama.hidden_size // llama.num_attention_heads
    kv_bytes = llama.num_hidden_layers * llama.num_key_value_heads * head_dim * 2 * 2  # K and V, bf16
    assert kv_bytes / 2**30 == KV_GIB_PER_TOKEN  # the bench's budget uses the real KV cache size
    assert llama_folder(Path("x"), layers=2) != llama_folder(Path("x"))  # a shallow build never passes for 32

    sana, gemma, vae = sana_transformer_kwargs(), gemma2_2b_config(), dc_ae_kwargs()
    assert sana["caption_channels"] == gemma.hidden_size == 2304
    assert sana["cross_attention_dim"] == sana["num_cross_attention_heads"] * sana["cross_attention_head_dim"]
    assert vae["latent_channels"] == sana["in_channels"] == sana["out_channels"]
    assert sana["guidance_embeds"] and sana["num_layers"] == 28
    assert (gemma.num_hidden_layers, gemma.num_attention_heads, gemma.num_key_value_heads) == (26, 8, 4)
    tokenizer = byte_fallback_gemma_tokenizer()
    assert max(tokenizer.get_vocab().values()) < gemma.vocab_size
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)

    with torch.device("meta"):  # shapes only: parameter counts as published, nothing allocated
        counts = {
            "llama": LlamaForCausalLM._from_config(llama),
            "gemma": Gemma2Model._from_config(gemma),
            "sana": SanaTransformer2DModel(**sana),
            "vae": AutoencoderDC(**vae),
        }
    billions = {name: sum(p.numel() for p in m.parameters()) / 1e9 for name, m in counts.items()}
    assert billions == pytest.approx({"llama": 8.03, "gemma": 2.61, "sana": 0.59, "vae": 0.31}, abs=0.01)


def test_llama_word_tokenizer_has_a_chat_template() -> None:
    from bench.llm_gpu_bench import word_tokenizer
    from bench.random_models import llama_config

    tokenizer = word_tokenizer()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a chair"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert ids[0] == llama_config().bos_token_id and max(ids) < llama_config().vocab_size
