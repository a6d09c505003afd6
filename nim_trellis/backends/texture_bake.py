"""Textured GLB: upstream's texture bake, step by step, with our GPU decimation in place of pyvista's.

Upstream's `postprocessing_utils.to_glb` runs: decimate (pyvista, CPU) → remove invisible faces and fill small
holes (1000 rasterised views, an igraph min-cut, pymeshfix) → UV unwrap (xatlas) → render the Gaussians from 100
views → optimise a texture against them (nvdiffrast, 2500 Adam steps) → inpaint its empty texels. This module calls
those same upstream functions in that order with to_glb's parameters, except the first: decimation is
`mesh_simplify` on the GPU (pyvista's vtk is several hundred MB, runs on the CPU, and took 7.2 s of to_glb's 31 s
on the H200). Calling the steps one by one gives each its own progress stage, where a cancel or timeout takes
effect and the stage-time metrics show where the time goes.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from nim_trellis.backends.base import StageReporter
from nim_trellis.backends.mesh_export import Z_UP_TO_Y_UP, simplified

# to_glb's own parameters (trellis/utils/postprocessing_utils.py at the pinned commit).
FILL_HOLES_MAX_SIZE = 0.04
FILL_HOLES_RESOLUTION = 1024
FILL_HOLES_VIEWS = 1000
BAKE_VIEWS = 100
BAKE_RESOLUTION = 1024
BAKE_LAMBDA_TV = 0.01

# Progress within the bake (its share of the job is set by the caller), at the start of each step.
STEPS = (
    ("decimate", 0.0),
    ("fill_holes", 0.05),
    ("uv_unwrap", 0.45),
    ("render_views", 0.6),
    ("texture_optimise", 0.65),
    ("export", 0.95),
)


def bake_glb(gaussian: Any, extracted: Any, *, simplify: float, texture_size: int, report: StageReporter) -> bytes:
    """A textured GLB from TRELLIS's Gaussians and mesh; `simplify` is the share of faces removed (to_glb's)."""
    from trellis.utils import postprocessing_utils as post
    from trellis.utils.render_utils import render_multiview

    at = dict(STEPS)
    report.stage("decimate", at["decimate"])
    kept = max(1, math.ceil(extracted.faces.shape[0] * (1.0 - simplify)))
    mesh = simplified(extracted, kept, colours=False)
    report.stage("fill_holes", at["fill_holes"])
    vertices, faces = post.postprocess_mesh(
        mesh.vertices.cpu().numpy(),
        mesh.faces.cpu().numpy(),
        simplify=False,
        fill_holes=True,
        fill_holes_max_hole_size=FILL_HOLES_MAX_SIZE,
        fill_holes_max_hole_nbe=int(250 * np.sqrt(1 - simplify)),  # as to_glb derives it from `simplify`
        fill_holes_resolution=FILL_HOLES_RESOLUTION,
        fill_holes_num_views=FILL_HOLES_VIEWS,
    )
    report.stage("uv_unwrap", at["uv_unwrap"])
    vertices, faces, uvs = post.parametrize_mesh(vertices, faces)
    report.stage("render_views", at["render_views"])
    observations, extrinsics, intrinsics = render_multiview(gaussian, resolution=BAKE_RESOLUTION, nviews=BAKE_VIEWS)
    report.stage("texture_optimise", at["texture_optimise"])
    texture = post.bake_texture(
        vertices,
        faces,
        uvs,
        observations,
        [np.any(o > 0, axis=-1) for o in observations],
        [e.cpu().numpy() for e in extrinsics],
        [i.cpu().numpy() for i in intrinsics],
        texture_size=texture_size,
        mode="opt",
        lambda_tv=BAKE_LAMBDA_TV,
    )
    report.stage("export", at["export"])
    return _glb(vertices, faces, uvs, texture)


def _glb(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray) -> bytes:
    import trimesh
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        roughnessFactor=1.0,
        baseColorTexture=Image.fromarray(texture),
        baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8),
    )
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    out = io.BytesIO()
    trimesh.Trimesh(vertices @ Z_UP_TO_Y_UP, faces, visual=visual, process=False).export(out, file_type="glb")
    return out.getvalue()
