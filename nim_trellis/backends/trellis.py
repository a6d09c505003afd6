"""`trellis`: microsoft/TRELLIS image-to-3D (and text-to-3D) with its real API (REFERENCE.md §3).

TRELLIS exists only inside the GPU image (it is not pip-installable), so it is imported lazily in `load()`, after
the attention and sparse-convolution environment variables it reads at import time are set. The adapter stays
thin: `Pipeline.from_pretrained(...)` then `.cuda()` (whose None result is never assigned), `.run(...)` under
`torch.inference_mode()` (with autograd on, upstream's decoders peak at 2-3x the memory), then
`postprocessing_utils.to_glb(...)` for textured GLBs or a plain vertex-coloured mesh when `no_texture` is set.
`to_glb` optimises the texture with autograd, so a textured run samples under `torch.no_grad()` instead (tensors
made in inference mode cannot be saved for backward) and bakes with autograd on, as upstream's demo does.

Low-VRAM mode (the 16gb and 24gb GPU memory profiles, `vram.py`) keeps the models in CPU memory and moves each
to the GPU when it runs, pushing the previous one out (`place_per_stage`), so one stage's weights occupy the GPU.

Images that already carry real alpha are cropped and premultiplied here exactly as upstream's `preprocess_image`
does, and passed with `preprocess_image=False`, so rembg (and its u2net download) is never touched for them.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from config import Settings
from nim_trellis.backends.base import MeshArtifact, MeshParams, StageReporter
from nim_trellis.backends.relief import has_real_alpha

TRELLIS_INPUT_SIDE = 518  # DINOv2 input size used by upstream's preprocessing
ALPHA_BBOX_LEVEL = 0.8 * 255  # upstream crops to pixels above 80% alpha
CROP_MARGIN = 1.2  # upstream's margin around the object
Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)  # as upstream's to_glb rotates


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


def vertex_coloured_mesh(mesh: Any) -> Any:
    """trimesh.Trimesh from TRELLIS's MeshExtractResult: colours from the first three vertex attributes, y up."""
    import trimesh

    vertices = mesh.vertices.detach().float().cpu().numpy() @ Z_UP_TO_Y_UP
    faces = mesh.faces.detach().cpu().numpy()
    rgb = np.clip(mesh.vertex_attrs[:, :3].detach().float().cpu().numpy(), 0.0, 1.0)
    colours = np.concatenate([(rgb * 255).astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=False)


def place_per_stage(pipe: Any, device: str = "cuda") -> None:
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


class TrellisBackend:
    name = "trellis"

    def __init__(self, settings: Settings, *, low_vram: bool = False) -> None:
        self.settings = settings
        self.low_vram = low_vram
        self.supports_text = bool(settings.trellis_text_model)
        self._image_pipe: Any = None
        self._text_pipe: Any = None
        self._post: Any = None

    def load(self) -> None:
        s = self.settings
        os.environ["ATTN_BACKEND"] = s.trellis_attn_backend  # read at `import trellis`: must come first
        os.environ["SPARSE_ATTN_BACKEND"] = s.trellis_sparse_attn_backend
        os.environ["SPCONV_ALGO"] = s.trellis_spconv_algo
        from trellis.pipelines import TrellisImageTo3DPipeline
        from trellis.utils import postprocessing_utils

        self._post = postprocessing_utils
        self._image_pipe = self._place(TrellisImageTo3DPipeline.from_pretrained(s.trellis_image_model))
        if self.supports_text:
            from trellis.pipelines import TrellisTextTo3DPipeline

            self._text_pipe = self._place(TrellisTextTo3DPipeline.from_pretrained(s.trellis_text_model))
        self._warm_up()

    def _place(self, pipe: Any) -> Any:
        if self.low_vram:
            place_per_stage(pipe)
        else:
            pipe.cuda()  # returns None; the pipeline moves in place
        return pipe

    def _warm_up(self) -> None:
        """One small run before readiness, so kernel selection/autotuning is not paid by the first request."""
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((200, 200, 200, 255), (16, 16, 48, 48))
        params = MeshParams(seed=1, ss_steps=1, slat_steps=1, ss_cfg=0.0, slat_cfg=0.0, no_texture=True)
        self._sample(self._image_pipe, prepare_rgba(image), params, preprocess_image=False)

    def _sample(self, pipe: Any, cond: Any, params: MeshParams, **extra: Any) -> dict[str, list[Any]]:
        import torch

        textured = params.output_format == "glb" and not params.no_texture
        with torch.no_grad() if textured else torch.inference_mode():
            return pipe.run(
                cond,
                seed=params.seed,
                sparse_structure_sampler_params={"steps": params.ss_steps, "cfg_strength": params.ss_cfg},
                slat_sampler_params={"steps": params.slat_steps, "cfg_strength": params.slat_cfg},
                formats=["mesh", "gaussian"] if textured else ["mesh"],  # decode only what the output needs
                **extra,
            )

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        report.stage("preprocess", 0.02)
        alpha = has_real_alpha(image)
        cond = prepare_rgba(image) if alpha else image.convert("RGB")
        report.stage("sampling", 0.05)
        outputs = self._sample(self._image_pipe, cond, params, preprocess_image=not alpha)
        return self._export(outputs, params, report)

    def text_to_mesh(self, prompt: str, params: MeshParams, report: StageReporter) -> MeshArtifact:
        report.stage("sampling", 0.05)
        outputs = self._sample(self._text_pipe, prompt, params)
        return self._export(outputs, params, report)

    def _export(self, outputs: dict[str, list[Any]], params: MeshParams, report: StageReporter) -> MeshArtifact:
        mesh = outputs["mesh"][0]
        buf = io.BytesIO()
        if params.output_format == "glb" and not params.no_texture:
            report.stage("texture_bake", 0.6)
            glb = self._post.to_glb(
                outputs["gaussian"][0],
                mesh,
                simplify=self.settings.mesh_simplify,
                texture_size=self.settings.texture_size,
            )
            glb.export(buf, file_type="glb")
        else:
            report.stage("export", 0.9)
            vertex_coloured_mesh(mesh).export(buf, file_type=params.output_format)
        return MeshArtifact(
            data=buf.getvalue(), output_format=params.output_format, backend=self.name, seed=params.seed
        )
