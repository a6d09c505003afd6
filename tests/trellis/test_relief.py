"""Relief geometry: closed, consistently wound, bounded, and shaped by the silhouette."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from nim_trellis.backends.base import MeshParams
from nim_trellis.backends.relief import (
    ReliefBackend,
    bridge_diagonals,
    build_shape,
    foreground_cells,
    has_real_alpha,
)
from tests.trellis.conftest import disc_image

PARAMS = MeshParams(seed=1, ss_steps=12, slat_steps=12, ss_cfg=7.5, slat_cfg=3.0)


class NullReporter:
    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []

    def stage(self, name: str, progress: float) -> None:
        self.stages.append((name, progress))


def shape_mesh(cells: np.ndarray) -> trimesh.Trimesh:
    shape = build_shape(bridge_diagonals(cells), depth=0.5, rim_half=0.01)
    return trimesh.Trimesh(shape.vertices, shape.faces, process=False)


def test_build_shape_closed_for_disc() -> None:
    yy, xx = np.mgrid[:64, :64]
    mesh = shape_mesh((yy - 32) ** 2 + (xx - 32) ** 2 < 25**2)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals: positive signed volume


@pytest.mark.parametrize("pattern", ["checker", "diagonal_pinch", "one_cell", "ring", "thin_line"])
def test_build_shape_closed_for_awkward_masks(pattern: str) -> None:
    cells = np.zeros((20, 20), dtype=bool)
    if pattern == "checker":
        cells[4:16, 4:16] = (np.add.outer(np.arange(12), np.arange(12)) % 2) == 0
    elif pattern == "diagonal_pinch":
        cells[5:10, 5:10] = True
        cells[10:15, 10:15] = True
    elif pattern == "one_cell":
        cells[3, 3] = True
    elif pattern == "ring":
        cells[3:17, 3:17] = True
        cells[7:13, 7:13] = False
    else:
        cells[10, 2:18] = True
    mesh = shape_mesh(cells)
    assert mesh.is_watertight, pattern
    assert mesh.is_winding_consistent, pattern
    assert mesh.volume > 0, pattern


def test_build_shape_bounded_and_centred() -> None:
    mesh = shape_mesh(np.ones((30, 60), dtype=bool))
    lo, hi = mesh.bounds
    assert np.allclose(lo[:2], [-0.5, -0.25]) and np.allclose(hi[:2], [0.5, 0.25])
    assert 0 < hi[2] <= 0.5 and np.isclose(lo[2], -hi[2])  # symmetric, thinner than wide


def test_build_shape_respects_silhouette() -> None:
    """Every vertex lies over a foreground cell: an L-shape's empty corner stays empty."""
    cells = np.zeros((40, 40), dtype=bool)
    cells[:, :10] = True
    cells[30:, :] = True
    mesh = shape_mesh(cells)
    x, y = mesh.vertices[:, 0], mesh.vertices[:, 1]
    empty_corner = (x > -0.5 + 10 / 40 + 1e-6) & (y > 0.5 - 30 / 40 + 1e-6)
    assert not empty_corner.any()
    assert mesh.is_watertight


def test_foreground_cells_uses_alpha() -> None:
    cells = foreground_cells(disc_image(256, alpha=True), resolution=32, bg_tolerance=0.12)
    assert cells[16, 16] and not cells[1, 1] and not cells[30, 2]


def test_foreground_cells_uses_border_colour_without_alpha() -> None:
    cells = foreground_cells(disc_image(256, alpha=False), resolution=32, bg_tolerance=0.12)
    assert cells[16, 16] and not cells[1, 1]
    assert 0.3 < cells.mean() < 0.8


def test_foreground_cells_whole_frame_when_nothing_stands_out() -> None:
    cells = foreground_cells(Image.new("RGB", (64, 64), "white"), resolution=16, bg_tolerance=0.12)
    assert cells.all()


def test_has_real_alpha_false_for_opaque_rgba() -> None:
    assert not has_real_alpha(Image.new("RGBA", (8, 8), (1, 2, 3, 255)))
    assert has_real_alpha(disc_image(64))


def test_image_to_mesh_textured_glb_loads(make_settings) -> None:
    backend = ReliefBackend(make_settings())
    reporter = NullReporter()
    art = backend.image_to_mesh(disc_image(300), PARAMS, reporter)
    scene = trimesh.load(io.BytesIO(art.data), file_type="glb")
    mesh = scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene
    assert mesh.is_watertight and len(mesh.faces) > 100
    assert mesh.visual.material.baseColorTexture is not None
    assert [s for s, _ in reporter.stages] == ["silhouette", "geometry", "export"]
    assert art.backend == "relief" and art.media_type == "model/gltf-binary"


def test_image_to_mesh_texture_shows_image_colour(make_settings) -> None:
    art = ReliefBackend(make_settings()).image_to_mesh(disc_image(200, colour=(10, 20, 240)), PARAMS, NullReporter())
    mesh = trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh")
    tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    h, w = tex.shape[:2]
    inside = tex[h * 130 // 200, w * 60 // 200]  # inside the disc, off the bar
    assert inside[2] > 200 and inside[0] < 40


def test_image_to_mesh_stl_and_vertex_colours(make_settings) -> None:
    backend = ReliefBackend(make_settings())
    stl = backend.image_to_mesh(
        disc_image(128), MeshParams(**{**PARAMS.__dict__, "output_format": "stl"}), NullReporter()
    )
    mesh = trimesh.load(io.BytesIO(stl.data), file_type="stl")
    assert mesh.is_watertight and stl.media_type == "model/stl"
    plain = backend.image_to_mesh(
        disc_image(128), MeshParams(**{**PARAMS.__dict__, "no_texture": True}), NullReporter()
    )
    coloured = trimesh.load(io.BytesIO(plain.data), file_type="glb", force="mesh")
    assert coloured.visual.kind == "vertex"
    assert len(np.unique(coloured.visual.vertex_colors[:, :3], axis=0)) > 1


def test_image_to_mesh_handles_tall_image(make_settings) -> None:
    img = Image.new("RGBA", (60, 400), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((10, 10, 50, 390), fill=(90, 90, 200, 255))
    art = ReliefBackend(make_settings()).image_to_mesh(img, PARAMS, NullReporter())
    mesh = trimesh.load(io.BytesIO(art.data), file_type="glb", force="mesh")
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert extent[1] > 5 * extent[0] and mesh.is_watertight
