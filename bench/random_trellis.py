"""TRELLIS-image and DINOv2 with random weights, from upstream's own classes and configs (the vendored sources).

- `build_trellis_image(root, device, size)`: microsoft/TRELLIS-image-large's layout (`pipeline.json`,
  `ckpts/<name>.json` + `.safetensors`) with upstream's own classes and `configs/`, random weights (upstream's own
  initialisation on the build device rather than `meta`: its constructors compute tensors that must hold real
  values); `size="tiny"` scales the same classes down so a whole `pipeline.run` takes seconds on a CPU
  (tests/trellis/real_trellis.py). On a CPU the mesh and Gaussian decoders need that module's device stand-ins.
- `build_dinov2_hub(...)`: TRELLIS conditions on DINOv2 through `torch.hub.load('facebookresearch/dinov2', ...)`;
  this lays out `$TORCH_HOME/hub` so that works offline with random weights.
- `unpack_sources(dest)`: third_party/'s archives (TRELLIS with FlexiCubes, utils3d, dinov2 at the image's refs),
  unpacked once. The `trellis` package must be importable (on sys.path) for the builders.

Timings measured with these are real; the outputs' shapes are not (random weights give scattered occupancy,
calibrated to a typical asset's voxel count).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.random_models import INIT_STD
from nim_trellis.tiny_models import build_once

THIRD_PARTY = Path(__file__).resolve().parent.parent / "third_party"
ARCHIVES = {"trellis": "trellis-6b0d647.tar.gz", "utils3d": "utils3d-9a4eb15.tar.gz", "dinov2": "dinov2-b8931f7.tar.gz"}
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+


@dataclass(frozen=True)
class Sources:
    trellis: Path  # holds trellis/ and configs/
    utils3d: Path  # holds the utils3d package
    dinov2: Path  # holds hubconf.py and dinov2/


def unpack_sources(dest: Path) -> Sources:
    """Each vendored archive unpacked once under `dest` (its single top folder: TRELLIS/, utils3d/, dinov2/)."""

    def unpack(archive: Path) -> Path:
        with tarfile.open(archive) as tar:
            (top,) = {m.name.split("/")[0] for m in tar.getmembers()}
            folder = Path(dest) / archive.name.removesuffix(".tar.gz")
            build_once(folder, lambda tmp: tar.extractall(tmp, **SAFE_EXTRACT))
        return folder / top

    return Sources(**{key: unpack(THIRD_PARTY / name) for key, name in ARCHIVES.items()})


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
