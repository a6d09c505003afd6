"""`trellis`: microsoft/TRELLIS image-to-3D (and text-to-3D) with its real API (REFERENCE.md §3).

TRELLIS is not pip-installable; the image clones it at a pinned commit and the CPU tests unpack the same sources.
It is imported in `load()`, after the environment it reads at import time is set (`configure_attention`) and the
optional modules it imports at module top are deferred (`optional_deps`), so the untextured and STL paths load
without the texture bake's CUDA extensions; what is missing shows in `capabilities()`.

The adapter stays thin: `Pipeline.from_pretrained(...)`, moved with `.to(device)` (whose None result is never
assigned), `.run(...)` under `torch.inference_mode()` (with autograd on, upstream's decoders peak at 2-3x the
memory). Two hooks on the pipeline's own sampler and decoder objects report every sampling step as progress, and
a cancelled or timed-out job stops at the next step. Untextured output is the extracted mesh simplified to
`MESH_FACE_BUDGET` faces (`mesh_export`); textured output is upstream's bake (`texture_bake`), which optimises the
texture with autograd, so a textured run samples under `torch.no_grad()` instead (tensors made in inference mode
cannot be saved for backward).

Low-VRAM mode (the 16gb and 24gb GPU memory profiles, `servicekit/vram.py`) keeps the models in CPU memory and moves
each to the GPU when it runs, pushing the previous one out (`place_per_stage`), so one stage's weights occupy the GPU.

Images that already carry real alpha are cropped and premultiplied here exactly as upstream's `preprocess_image`
does, and passed with `preprocess_image=False`, so rembg (and its u2net download) is never touched for them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from config import Settings
from nim_trellis.backends import mesh_export, optional_deps, texture_bake, torch_attention
from nim_trellis.backends.base import Capability, MeshArtifact, MeshParams, ScaledReporter, StageReporter
from nim_trellis.backends.relief import has_real_alpha
from servicekit.hub import ModelMissing, loadable_source, network_allowed

TRELLIS_INPUT_SIDE = 518  # DINOv2 input size used by upstream's preprocessing
ALPHA_BBOX_LEVEL = 0.8 * 255  # upstream crops to pixels above 80% alpha
CROP_MARGIN = 1.2  # upstream's margin around the object

# Where each part of a run sits in the job's progress (0..1 of the backend's share), untextured / textured.
SPANS_UNTEXTURED = {"structure": (0.02, 0.35), "latent": (0.35, 0.85), "decoding": 0.85, "export": 0.92}
SPANS_TEXTURED = {"structure": (0.02, 0.15), "latent": (0.15, 0.35), "decoding": 0.35, "bake": (0.4, 1.0)}
STAGE_NAMES = {"structure": "sampling_structure", "latent": "sampling_latent"}
DINOV2_REPO = "facebookresearch/dinov2"  # where upstream's image pipeline loads its image encoder (torch.hub)


def configure_attention(settings: Settings) -> None:
    """Set what TRELLIS and DINOv2 read when they are imported; call before the first `import trellis`."""
    sparse = settings.trellis_sparse_attn_backend
    os.environ["ATTN_BACKEND"] = settings.trellis_attn_backend
    os.environ["SPARSE_ATTN_BACKEND"] = "flash_attn" if sparse == "torch" else sparse
    os.environ["SPCONV_ALGO"] = settings.trellis_spconv_algo
    if sparse == "torch":
        torch_attention.install()
    if "xformers" not in (settings.trellis_attn_backend, sparse):
        # DINOv2 uses any importable xformers whatever TRELLIS is told; a build for another torch then fails.
        os.environ["XFORMERS_DISABLED"] = "1"


@contextlib.contextmanager
def hub_cache_first() -> Iterator[None]:
    """`torch.hub.load("owner/repo", ...)` from the hub cache (`$TORCH_HOME/hub/owner_repo_main`) when it is there.

    Given no branch, torch.hub first asks GitHub which branch is the default; where the network drops packets
    instead of refusing them (an offline server behind a firewall) that request waits forever and the service
    never becomes ready. A cached checkout answers without asking; weights come from `hub/checkpoints` as before.
    """
    import torch.hub

    original = torch.hub.load

    def load(repo_or_dir: str, model: str, *args: Any, source: str = "github", **kwargs: Any) -> Any:
        cached = torch_hub_checkout(repo_or_dir) if source == "github" and ":" not in repo_or_dir else None
        if cached is not None:
            return original(str(cached), model, *args, source="local", **kwargs)
        return original(repo_or_dir, model, *args, source=source, **kwargs)

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def torch_hub_checkout(repo: str) -> Path | None:
    """The cached checkout of a torch.hub repository (as `hub_cache_first` loads it), or None."""
    import torch.hub

    for branch in ("main", "master"):
        cached = Path(torch.hub.get_dir()) / f"{repo.replace('/', '_')}_{branch}"
        if (cached / "hubconf.py").is_file():
            return cached
    return None


def model_sources(settings: Settings) -> tuple[str, str | None]:
    """Where to load the image (and text) pipeline from; `ModelMissing` naming every part that is neither on disk
    nor downloadable now, so an offline start says it in one line instead of retrying for a minute."""
    missing: list[str] = []
    sources: list[str | None] = []
    for model_id, setting in (
        (settings.trellis_image_model, "TRELLIS_IMAGE_MODEL"),
        (settings.trellis_text_model, "TRELLIS_TEXT_MODEL"),
    ):
        try:
            sources.append(loadable_source(model_id, settings, setting) if model_id else None)
        except ModelMissing as e:
            missing.append(str(e))
    if torch_hub_checkout(DINOV2_REPO) is None and not network_allowed(settings):
        import torch.hub

        missing.append(
            f"DINOv2 ({DINOV2_REPO}, the image encoder) is not in the torch hub cache ({torch.hub.get_dir()}) and the "
            "network cannot be reached; fetch it with `python scripts/fetch_models.py` (into TORCH_HOME)"
        )
    if missing:
        raise ModelMissing("; ".join(missing))
    assert sources[0] is not None  # TRELLIS_IMAGE_MODEL has no empty value
    return sources[0], sources[1]


def prepare_rgba(image: Image.Image) -> Image.Image:
    """Crop around the alpha mask with a margin, resize to 518² and premultiply: upstream's steps minus rembg."""
    rgba = np.asarray(image.convert("RGBA"))
    ys, xs = np.nonzero(rgba[..., 3] > ALPHA_BBOX_LEVEL)
    if xs.size == 0:
        ys, xs = np.nonzero(rgba[..., 3] > 0)
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = int(max(xs.max() - xs.min(), ys.max() - ys.min()) * CROP_MARGIN) // 2
    crop = Image.fromarray(rgba).crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    arr = np.asarray(crop.resize((TRELLIS_INPUT_SIDE, TRELLIS_INPUT_SIDE), Image.Resampling.LANCZOS)) / 255.0
    return Image.fromarray((arr[..., :3] * arr[..., 3:4] * 255).astype(np.uint8), "RGB")


def place_per_stage(pipe: Any, device: str) -> None:
    """Low-VRAM mode: models stay on the CPU; a forward pre-hook moves each to `device` as it runs and the others
    back, and the pipeline's `device` (where it creates its inputs and noise) is pinned to `device`."""
    import torch

    target = torch.device(device)
    models = [m for m in pipe.models.values() if isinstance(m, torch.nn.Module)]

    def to_device(module: torch.nn.Module, _args: Any) -> None:
        with torch.inference_mode(False), torch.no_grad():  # weights stay normal tensors, movable in any mode
            for other in models:
                if other is not module and _placed_on(other, target):
                    other.to("cpu")
            module.to(target)

    for model in models:
        model.register_forward_pre_hook(to_device)
    cls = type(pipe)
    pipe.__class__ = type(f"PerStage{cls.__name__}", (cls,), {"device": property(lambda _self: target)})


def _placed_on(module: Any, device: Any) -> bool:
    param = next(module.parameters(), None)
    return param is not None and param.device.type == device.type


@dataclass
class RunProgress:
    """Turns sampler steps and decoder calls of one pipeline run into job progress (one run at a time)."""

    report: StageReporter
    spans: dict[str, Any]
    steps: dict[str, int]
    done: dict[str, int] = field(default_factory=dict)

    def sampler_step(self, part: str) -> None:
        start, end = self.spans[part]
        i = self.done.get(part, 0)
        self.done[part] = i + 1
        if i == 0:
            self.report.stage(STAGE_NAMES[part], start)
        else:
            self.report.advance(start + (end - start) * i / max(self.steps[part], 1))

    def decoding(self) -> None:
        self.report.stage("decoding", self.spans["decoding"])


class TrellisBackend:
    name = "trellis"

    def __init__(self, settings: Settings, *, texture_size: int | None = None, low_vram: bool = False) -> None:
        self.settings = settings
        self.texture_size = texture_size or settings.texture_size  # the GPU memory plan may cap TEXTURE_SIZE
        self.low_vram = low_vram
        self.supports_text = bool(settings.trellis_text_model)
        self._image_pipe: Any = None
        self._text_pipe: Any = None
        self._features = optional_deps.Features()
        self._texture_problem = "not loaded yet"
        self._run: RunProgress | None = None

    # --- loading -------------------------------------------------------------------------------------------
    def load(self) -> None:
        s = self.settings
        image_source, text_source = model_sources(s)
        configure_attention(s)
        self._features = optional_deps.defer()
        from trellis.pipelines import TrellisImageTo3DPipeline

        with hub_cache_first():  # the image pipeline loads DINOv2 through torch.hub
            self._image_pipe = self._prepare(TrellisImageTo3DPipeline.from_pretrained(image_source))
        if self.supports_text:
            from trellis.pipelines import TrellisTextTo3DPipeline

            self._text_pipe = self._prepare(TrellisTextTo3DPipeline.from_pretrained(text_source))
        self._warm_up()
        self._texture_problem = self._check_texture()

    def _prepare(self, pipe: Any) -> Any:
        import torch

        if self.low_vram:
            place_per_stage(pipe, self.settings.trellis_device)
        else:
            pipe.to(torch.device(self.settings.trellis_device))  # returns None; the pipeline moves in place
        for part, sampler in (("structure", pipe.sparse_structure_sampler), ("latent", pipe.slat_sampler)):
            sampler.sample_once = self._counted(sampler.sample_once, part)
        decode = pipe.decode_slat

        def decode_slat(*args: Any, **kwargs: Any) -> Any:
            if self._run is not None:
                self._run.decoding()
            return decode(*args, **kwargs)

        pipe.decode_slat = decode_slat
        return pipe

    def _counted(self, sample_once: Any, part: str) -> Any:
        def step(*args: Any, **kwargs: Any) -> Any:
            if self._run is not None:
                self._run.sampler_step(part)  # raises here when the job was cancelled: within one step
            return sample_once(*args, **kwargs)

        return step

    def _warm_up(self) -> None:
        """One small run before readiness, so kernel selection/autotuning is not paid by the first request."""
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((200, 200, 200, 255), (16, 16, 48, 48))
        params = MeshParams(seed=1, ss_steps=1, slat_steps=1, ss_cfg=0.0, slat_cfg=0.0, no_texture=True)
        self._sample(self._image_pipe, prepare_rgba(image), params, preprocess_image=False)

    def _check_texture(self) -> str:
        """Why textured GLBs cannot be made here ("" when they can). Builds nvdiffrast's plugin now, not at the
        first textured request."""
        if not self._features.available("texture"):
            return self._features.reason("texture")
        if not self.settings.trellis_device.startswith("cuda"):
            return "the texture bake needs a CUDA GPU"
        try:
            import sys

            import torch.utils.cpp_extension
            import utils3d.torch

            # nvdiffrast 0.3.3 JIT-builds its plugin (cached under TORCH_EXTENSIONS_DIR) and then imports it by
            # name, which fails unless the build folder is on sys.path.
            sys.path.append(torch.utils.cpp_extension._get_build_directory("nvdiffrast_plugin", False))
            utils3d.torch.RastContext(backend="cuda")
        except Exception as e:  # a plugin that does not build or load: textured GLBs fail, the rest works
            return f"nvdiffrast could not start: {type(e).__name__}: {e}"
        return ""

    def capabilities(self) -> dict[str, Capability]:
        rembg = self._features.reason("background_removal")
        return {
            "texture": Capability(not self._texture_problem, self._texture_problem or "textured GLB available"),
            "background_removal": Capability(
                not rembg, f"rembg: {rembg}; send images with transparency" if rembg else "rembg available"
            ),
        }

    # --- running -------------------------------------------------------------------------------------------
    def _sample(
        self, pipe: Any, cond: Any, params: MeshParams, progress: RunProgress | None = None, **extra: Any
    ) -> dict[str, list[Any]]:
        import torch

        textured = params.output_format == "glb" and not params.no_texture
        self._run = progress
        try:
            with torch.no_grad() if textured else torch.inference_mode():
                return pipe.run(
                    cond,
                    seed=params.seed,
                    sparse_structure_sampler_params={"steps": params.ss_steps, "cfg_strength": params.ss_cfg},
                    slat_sampler_params={"steps": params.slat_steps, "cfg_strength": params.slat_cfg},
                    formats=["mesh", "gaussian"] if textured else ["mesh"],  # decode only what the output needs
                    **extra,
                )
        finally:
            self._run = None

    def _progress(self, params: MeshParams, report: StageReporter) -> RunProgress:
        textured = params.output_format == "glb" and not params.no_texture
        spans = SPANS_TEXTURED if textured else SPANS_UNTEXTURED
        return RunProgress(report, spans, {"structure": params.ss_steps, "latent": params.slat_steps})

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        report.stage("preprocess", 0.0)
        alpha = has_real_alpha(image)
        cond = prepare_rgba(image) if alpha else image.convert("RGB")
        progress = self._progress(params, report)
        outputs = self._sample(self._image_pipe, cond, params, progress, preprocess_image=not alpha)
        return self._export(outputs, params, progress)

    def text_to_mesh(self, prompt: str, params: MeshParams, report: StageReporter) -> MeshArtifact:
        progress = self._progress(params, report)
        outputs = self._sample(self._text_pipe, prompt, params, progress)
        return self._export(outputs, params, progress)

    def _export(self, outputs: dict[str, list[Any]], params: MeshParams, progress: RunProgress) -> MeshArtifact:
        extracted = outputs["mesh"][0]
        if not extracted.success:
            raise ValueError("TRELLIS produced an empty mesh for this input; try another seed or image")
        if params.output_format == "glb" and not params.no_texture:
            start, end = progress.spans["bake"]
            data = texture_bake.bake_glb(
                outputs["gaussian"][0],
                extracted,
                simplify=self.settings.mesh_simplify,
                texture_size=self.texture_size,
                report=ScaledReporter(progress.report, start, end),
            )
        else:
            progress.report.stage("export", progress.spans["export"])
            mesh = mesh_export.simplified(extracted, self.settings.mesh_face_budget)
            data = mesh_export.encode(mesh, params.output_format)
        return MeshArtifact(data=data, output_format=params.output_format, backend=self.name, seed=params.seed)
