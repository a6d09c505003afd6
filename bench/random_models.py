"""The gpu profile's models with their exact architectures and random weights, built locally (no download).

`bench/vram_fit.py --random-weights DIR` measures whether each GPU memory profile fits its card on a machine that
cannot reach the Hugging Face hub (nor the gated Llama-3.1-8B). What it measures (weights, KV cache, activations,
allocator peaks, decode speed) depends on the models' shapes and dtypes, not on their weight values, so these stand
in for the real ones. Under DIR:

- `llama-3.1-8b/`: Llama-3.1-8B's exact config (`llama31_8b_config` in bench/llm_gpu_bench.py), random bf16 weights
  and its word-level tokenizer covering the 128,256 ids, with the Llama-3-style chat template;
- `sana-sprint-0.6b/`: a SanaSprintPipeline with the transformer, Gemma-2 2B text encoder and DC-AE f32c32 VAE
  configs of Efficient-Large-Model/Sana_Sprint_0.6B_1024px_diffusers, random bf16 weights and a byte-fallback Gemma
  tokenizer (the tiny SANA's). Its prompts encode to about three times as many tokens as with Gemma's real
  tokenizer; the text encoder's activations (well under its 5 GB of weights) are the only numbers that change.

Each module is made on the `meta` device, given memory on the build device and filled with small random normals
(matrices), ones (norm scales) and zeros (biases), skipping the libraries' own per-layer initialisers: seconds on a
GPU, about 7 s per billion parameters on 2 CPU cores. Each folder is built once (temp folder and rename, like the
tiny models) and loads through the ordinary `from_pretrained` path.

TRELLIS-image and DINOv2 are built by `bench/random_trellis.py`.

    python bench/random_models.py DIR                  # build both under DIR (cuda when available, else cpu)
    python bench/random_models.py DIR --llama-layers 2 # a 2-layer Llama-3.1-8B, to check the plumbing on CPU
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nim_trellis.tiny_models import build_once, byte_fallback_gemma_tokenizer

LLAMA_DIR = "llama-3.1-8b"
SANA_DIR = "sana-sprint-0.6b"
INIT_STD = 0.02  # the `initializer_range` of the Llama and Gemma configs: finite logits, no overflow in bf16
# Each safetensors shard is staged in host memory while it is written; shards of the real Llama-3.1-8B repo's size
# keep that to a few GB on top of the model.
SHARD_SIZE = "5GB"


def llama_config(layers: int | None = None) -> Any:  # -> transformers.LlamaConfig
    """Llama-3.1-8B's config; `layers` makes a shallower one (same width and vocabulary) for CPU checks."""
    from bench.llm_gpu_bench import llama31_8b_config

    config = llama31_8b_config()
    if layers is not None:
        config.num_hidden_layers = layers
    return config


def sana_transformer_kwargs() -> dict[str, Any]:
    """`SanaTransformer2DModel` of SANA-Sprint 0.6B 1024px (its transformer/config.json)."""
    return {
        "in_channels": 32, "out_channels": 32, "num_attention_heads": 36, "attention_head_dim": 32, "num_layers": 28,
        "num_cross_attention_heads": 16, "cross_attention_head_dim": 72, "cross_attention_dim": 1152,
        "caption_channels": 2304, "mlp_ratio": 2.5, "dropout": 0.0, "attention_bias": False, "sample_size": 32,
        "patch_size": 1, "norm_elementwise_affine": False, "norm_eps": 1e-6, "interpolation_scale": None,
        "guidance_embeds": True, "guidance_embeds_scale": 0.1, "qk_norm": "rms_norm_across_heads",
        "timestep_scale": 1.0,
    }  # fmt: skip


def gemma2_2b_config() -> Any:  # -> transformers.Gemma2Config
    """SANA's text encoder: Gemma-2 2B (the decoder of Efficient-Large-Model/gemma-2-2b-it)."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256, sliding_window=4096,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip


def dc_ae_kwargs() -> dict[str, Any]:
    """`AutoencoderDC` f32c32 (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers, the SANA-Sprint repo's vae/)."""
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    return {
        "in_channels": 3, "latent_channels": 32, "attention_head_dim": 32,
        "encoder_block_types": blocks, "decoder_block_types": blocks,
        "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "encoder_layers_per_block": (2, 2, 2, 3, 3, 3), "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
        "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "upsample_block_type": "interpolate", "downsample_block_type": "Conv", "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu", "encoder_out_shortcut": True, "decoder_in_shortcut": True,
        "decoder_conv_act_fn": "relu", "scaling_factor": 0.41407,
    }  # fmt: skip


def llama_folder(root: Path, layers: int | None = None, *, meta_tokenizer: bool = False) -> Path:
    """Where the Llama is built; a shallower one, or one with Meta's tokenizer, gets its own folder."""
    name = LLAMA_DIR if layers is None else f"{LLAMA_DIR}-{layers}-layers"
    return Path(root) / (f"{name}-meta-tokenizer" if meta_tokenizer else name)


def sana_folder(root: Path) -> Path:
    return Path(root) / SANA_DIR


def random_module(make: Callable[[], Any], device: str) -> Any:
    """`make()`'s module with bf16 random weights on `device`, without running its own (slow) initialisers."""
    import torch

    with torch.device("meta"):
        module = make()
    module = module.to(dtype=torch.bfloat16).to_empty(device=device)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim > 1:
                param.normal_(0.0, INIT_STD)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)  # norm scales (Gemma stores scale - 1, so its norms scale by 2: still finite)
    return module.eval()


def build_llama(root: Path, device: str, layers: int | None = None, *, tokenizer_model: Path | None = None) -> Path:
    """The random Llama with the word-level tokenizer, or with Meta's own when `tokenizer_model` (llama3's
    tokenizer.model from the `llama-models` wheel, see bench/llama3_tokenizer.py) is given: prompts then have their
    real length, and JSON-constrained answers (the studio's scene plans) can be spelled at all."""

    def build(path: Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from bench.llama3_tokenizer import llama3_tokenizer
        from bench.llm_gpu_bench import word_tokenizer

        config = llama_config(layers)
        model = random_module(lambda: LlamaForCausalLM._from_config(config, dtype=torch.bfloat16), device)
        model.save_pretrained(path, max_shard_size=SHARD_SIZE)
        tokenizer = llama3_tokenizer(tokenizer_model) if tokenizer_model else word_tokenizer()
        tokenizer.save_pretrained(path)

    return build_once(llama_folder(root, layers, meta_tokenizer=tokenizer_model is not None), build)


def build_sana_sprint(root: Path, device: str) -> Path:
    def build(path: Path) -> None:
        import torch
        from diffusers import AutoencoderDC, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler
        from transformers import Gemma2Model

        gemma = gemma2_2b_config()
        pipe = SanaSprintPipeline(
            tokenizer=byte_fallback_gemma_tokenizer(),
            text_encoder=random_module(lambda: Gemma2Model._from_config(gemma, dtype=torch.bfloat16), device),
            vae=random_module(lambda: AutoencoderDC(**dc_ae_kwargs()), device),
            transformer=random_module(lambda: SanaTransformer2DModel(**sana_transformer_kwargs()), device),
            scheduler=SCMScheduler(),
        )
        pipe.save_pretrained(path, max_shard_size=SHARD_SIZE)

    return build_once(sana_folder(root), build)


def build_all(root: Path, device: str, llama_layers: int | None = None) -> dict[str, Path]:
    """Both folders under `root`, each built once."""
    return {"llm": build_llama(root, device, llama_layers), "imagegen": build_sana_sprint(root, device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder to build under")
    p.add_argument("--device", default="", help="build device (default: cuda when available, else cpu)")
    p.add_argument("--llama-layers", type=int, default=None, help="a shallower Llama, for plumbing checks")
    args = p.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for role, folder in build_all(args.root, device, args.llama_layers).items():
        print(f"{role}: {folder}")


if __name__ == "__main__":
    main()
