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

- `trellis-image-large/` (`build_trellis_image`): microsoft/TRELLIS-image-large's layout (`pipeline.json`,
  `ckpts/<name>.json` + `.safetensors`) with upstream's own classes and `configs/`, random weights (upstream's own
  initialisation on the build device rather than `meta`: its constructors compute tensors that must hold real
  values); `size="tiny"` scales the same classes down so a whole `pipeline.run` takes seconds on a CPU
  (tests/trellis/real_trellis.py). On a CPU the mesh and Gaussian decoders need that module's device stand-ins.
  Its image conditioning comes through `torch.hub.load('facebookresearch/dinov2', ...)`: `build_dinov2_hub` lays
  out `$TORCH_HOME/hub` so that works offline with random weights.

    python bench/random_models.py DIR                  # build both under DIR (cuda when available, else cpu)
    python bench/random_models.py DIR --llama-layers 2 # a 2-layer Llama-3.1-8B, to check the plumbing on CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nim_trellis.tiny_models import build_once, byte_fallback_gemma_tokenizer  # noqa: E402

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


def llama_folder(root: Path, layers: int | None = None) -> Path:
    """Where the Llama is built; a shallower one gets its own folder, so it never passes for the real shape."""
    return Path(root) / (LLAMA_DIR if layers is None else f"{LLAMA_DIR}-{layers}-layers")


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


def build_llama(root: Path, device: str, layers: int | None = None) -> Path:
    def build(path: Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from bench.llm_gpu_bench import word_tokenizer

        config = llama_config(layers)
        model = random_module(lambda: LlamaForCausalLM._from_config(config, dtype=torch.bfloat16), device)
        model.save_pretrained(path, max_shard_size=SHARD_SIZE)
        word_tokenizer().save_pretrained(path)

    return build_once(llama_folder(root, layers), build)


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


# --- TRELLIS-image: upstream's classes and configs (the `trellis` package must be importable) -------------------
TRELLIS_DIRS = {"full": "trellis-image-large", "tiny": "trellis-image-tiny"}
# pipeline.json role -> (checkpoint name in microsoft/TRELLIS-image-large, upstream config file under configs/).
TRELLIS_MODELS = {
    "sparse_structure_decoder": ("ss_dec_conv3d_16l8_fp16", "vae/ss_vae_conv3d_16l8_fp16.json"),
    "sparse_structure_flow_model": ("ss_flow_img_dit_L_16l8_fp16", "generation/ss_flow_img_dit_L_16l8_fp16.json"),
    "slat_flow_model": ("slat_flow_img_dit_L_64l8p2_fp16", "generation/slat_flow_img_dit_L_64l8p2_fp16.json"),
    "slat_decoder_mesh": ("slat_dec_mesh_swin8_B_64l8m256c_fp16", "vae/slat_vae_dec_mesh_swin8_B_64l8_fp16.json"),
    "slat_decoder_gs": ("slat_dec_gs_swin8_B_64l8gs32_fp16", "vae/slat_vae_enc_dec_gs_swin8_B_64l8_fp16.json"),
    "slat_decoder_rf": ("slat_dec_rf_swin8_B_64l8r16_fp16", "vae/slat_vae_dec_rf_swin8_B_64l8_fp16.json"),
}
CONFIG_MODEL = {"vae": "decoder", "generation": "denoiser"}  # which model of an upstream config file is used
# Tiny: the same classes with fewer channels and blocks, fp32, at resolutions that stay consistent: sparse-structure
# flow 4³ -> its decoder (two 2x upsamplings) a 16³ occupancy grid -> SLat flow and decoders at 16 -> FlexiCubes 64.
# The mesh decoder keeps 256 channels: its subdivision blocks group-normalise 256/4 and 256/8 channels in 32 groups.
TRELLIS_TINY_ARGS = {
    "sparse_structure_decoder": {"channels": [64, 32, 16], "num_res_blocks": 1, "num_res_blocks_middle": 1},
    "sparse_structure_flow_model": {"resolution": 4, "model_channels": 64, "num_blocks": 2, "num_heads": 4},
    "slat_flow_model": {
        "resolution": 16, "model_channels": 64, "num_blocks": 2, "num_heads": 4, "num_io_res_blocks": 1,
        "io_block_channels": [32]},
    "slat_decoder_mesh": {"resolution": 16, "model_channels": 256, "num_blocks": 1, "num_heads": 4},
    "slat_decoder_gs": {"resolution": 16, "model_channels": 64, "num_blocks": 1, "num_heads": 4},
    "slat_decoder_rf": {"resolution": 16, "model_channels": 64, "num_blocks": 1, "num_heads": 4},
}  # fmt: skip
TRELLIS_IMAGE_COND = {"full": "dinov2_vitl14_reg", "tiny": "dinov2_vits14_reg"}
DINOV2_WIDTH = {"dinov2_vitl14_reg": 1024, "dinov2_vits14_reg": 384}  # the flow models' cond_channels
# The sampler settings of microsoft/TRELLIS-image-large's pipeline.json.
TRELLIS_SAMPLERS = {
    "sparse_structure_sampler": {"cfg_strength": 7.5},
    "slat_sampler": {"cfg_strength": 3.0},
}
# The share of the sparse-structure grid a typical asset occupies (about 20k of the 64³ voxels). Left at random, the
# decoder's threshold falls anywhere: 20-70% of the grid in scattered voxels, depending on the draw.
TYPICAL_OCCUPANCY = 0.076
TRELLIS_SEED = 0  # the same draw each build: the same voxel and face counts for the same input


def trellis_configs_dir() -> Path:
    import trellis

    return Path(trellis.__file__).resolve().parent.parent / "configs"


def trellis_model_configs(size: str = "full") -> dict[str, dict[str, Any]]:
    """pipeline.json role -> {"name": class, "args": ...} as `trellis.models.from_pretrained` reads it."""
    configs, specs = trellis_configs_dir(), {}
    cond = DINOV2_WIDTH[TRELLIS_IMAGE_COND[size]]
    for role, (_, file) in TRELLIS_MODELS.items():
        spec = json.loads((configs / file).read_text())["models"][CONFIG_MODEL[file.split("/")[0]]]
        name, args = spec["name"].removeprefix("Elastic"), dict(spec["args"])  # Elastic*: training-only variants
        if size == "tiny":
            args.update(TRELLIS_TINY_ARGS[role], use_fp16=False)
            args.update({"cond_channels": cond} if "cond_channels" in args else {})
        specs[role] = {"name": name, "args": args}
    return specs


def trellis_checkpoint_names(size: str = "full") -> dict[str, str]:
    return {role: name if size == "full" else f"tiny_{role}" for role, (name, _) in TRELLIS_MODELS.items()}


def trellis_pipeline_json(size: str = "full") -> dict[str, Any]:
    """pipeline.json as microsoft/TRELLIS-image-large has it (TrellisImageTo3DPipeline.from_pretrained reads it)."""
    slat_flow = json.loads((trellis_configs_dir() / TRELLIS_MODELS["slat_flow_model"][1]).read_text())
    normalization = slat_flow["dataset"]["args"]["normalization"]  # the SLat statistics the flow was trained on
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}}
    params = {"steps": 25, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    models = {role: f"ckpts/{name}" for role, name in trellis_checkpoint_names(size).items()}
    return {
        "name": "TrellisImageTo3DPipeline",
        "args": {
            "models": models,
            **{key: {**sampler, "params": {**params, **cfg}} for key, cfg in TRELLIS_SAMPLERS.items()},
            "slat_normalization": {"mean": normalization["mean"], "std": normalization["std"]},
            "image_cond_model": TRELLIS_IMAGE_COND[size],
        },
    }


def trellis_model(spec: dict[str, Any]) -> Any:
    """An upstream model with upstream's initialisation, its zero-initialised tensors (output layers, adaLN
    modulation, biases) re-drawn from N(0, INIT_STD): with them at zero the flows would predict no velocity and the
    decoders nothing. Built on the current default device (`with torch.device(...)`; `meta` checks shapes only).

    Not constructed on `meta` and filled afterwards: upstream computes tensors in its constructors (positional
    embeddings, Gaussian offsets, FlexiCubes tables), and those must hold real values."""
    import torch
    from trellis import models

    model = getattr(models, spec["name"])(**spec["args"])
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type != "meta" and not param.any():
                param.normal_(0.0, INIT_STD)
    return model.eval()


def calibrate_occupancy(decoder: Any, latent_resolution: int) -> None:
    """Shift the sparse-structure decoder's output bias so that a standard-normal latent (what the flow starts from
    and, with random weights, about what it ends with) occupies TYPICAL_OCCUPANCY of the grid."""
    import torch

    out_bias = decoder.out_layer[-1].bias
    if out_bias.device.type == "meta":
        return
    widen = decoder.use_fp16 and out_bias.device.type == "cpu"  # half-precision 3D convolutions crawl on a CPU
    if widen:
        decoder.convert_to_fp32()
    with torch.no_grad():
        latent = torch.randn(1, decoder.latent_channels, *[latent_resolution] * 3, device=out_bias.device)
        logits = decoder(latent).flatten().float()
        out_bias -= torch.quantile(logits, 1.0 - TYPICAL_OCCUPANCY).to(out_bias.dtype)
    if widen:
        decoder.convert_to_fp16()


def save_trellis_model(model: Any, spec: dict[str, Any], path: Path) -> None:
    """`path`.json + `path`.safetensors, the pair `trellis.models.from_pretrained(path)` loads."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(spec, indent=2))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path.with_suffix(".safetensors")
    )


def trellis_folder(root: Path, size: str = "full") -> Path:
    return Path(root) / TRELLIS_DIRS[size]


def build_trellis_image(root: Path, device: str, size: str = "full") -> Path:
    """A TRELLIS-image pipeline folder in upstream's format with random weights (`size`: "full" or "tiny")."""

    def build(path: Path) -> None:
        import torch

        specs, names = trellis_model_configs(size), trellis_checkpoint_names(size)
        latent_resolution = specs["sparse_structure_flow_model"]["args"]["resolution"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRELLIS_SEED)
            for role, spec in specs.items():
                with torch.device(device):
                    model = trellis_model(spec)
                if role == "sparse_structure_decoder":
                    calibrate_occupancy(model, latent_resolution)
                save_trellis_model(model, spec, path / "ckpts" / names[role])
                del model
        (path / "pipeline.json").write_text(json.dumps(trellis_pipeline_json(size), indent=2))

    return build_once(trellis_folder(root, size), build)


DINOV2_HUB_REPO = "facebookresearch_dinov2_main"  # torch.hub's cache folder for facebookresearch/dinov2 (branch main)
DINOV2_ARCH = {384: "vit_small", 768: "vit_base", 1024: "vit_large", 1536: "vit_giant2"}  # by embedding width


def build_dinov2_hub(torch_home: Path, dinov2_source: Path, name: str, device: str) -> Path:
    """`$TORCH_HOME/hub` such that `torch.hub.load('facebookresearch/dinov2', name, pretrained=True)` works offline:
    the dinov2 sources as the cached repository and random weights under the file name upstream downloads."""
    import torch

    hub = Path(torch_home) / "hub"
    repo = build_once(hub / DINOV2_HUB_REPO, lambda path: shutil.copytree(dinov2_source, path, dirs_exist_ok=True))
    with torch.device(device):  # upstream's own (random) initialisation
        model = torch.hub.load(str(repo), name, source="local", pretrained=False)
    weights = hub / "checkpoints" / dinov2_weights_file(model)
    if not weights.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_name(f".{weights.name}.tmp")
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
        tmp.rename(weights)
    return hub


def dinov2_weights_file(model: Any) -> str:
    """The checkpoint file name dinov2/hub/backbones.py downloads for this model."""
    from dinov2.hub.utils import _make_dinov2_model_name  # importable once torch.hub has loaded the repository

    arch = DINOV2_ARCH[model.embed_dim]
    return f"{_make_dinov2_model_name(arch, model.patch_size, model.num_register_tokens)}_pretrain.pth"


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
