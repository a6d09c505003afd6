"""`relief`: a CPU image-to-3D backend that needs no model.

It is honest about what it is: the object's silhouette inflated into a smooth, closed "pillow" with the image as
its front texture, not a reconstruction of hidden geometry. Steps:

1. foreground cells on a coarse grid, from the alpha channel or (no alpha) from the distance to the border colour;
2. diagonal-only contacts between cells are bridged, so every rim vertex has exactly two rim edges (manifold);
3. a height field: Euclidean distance to the rim, shaped like a circle's profile (`sqrt(1 - (1 - d/R)^2)`), so a
   disc becomes a half-ellipsoid, then lightly smoothed;
4. front (+z) and mirrored back (-z) surfaces share the grid; a thin wall joins their rims, so the mesh is closed
   and watertight by construction;
5. trimesh writes a textured GLB (the input image, UVs from the grid) or an STL.

All of it is vectorised numpy/scipy; a 1024² RGBA image takes well under half a second on one core.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from config import Settings
from nim_trellis.backends.base import Capability, MeshArtifact, MeshParams, StageReporter

ALPHA_OPAQUE = 128  # alpha at or above this counts as foreground (and below it as "real" transparency)
MEAN_SAMPLE_SIDE = 64  # the mean foreground colour is estimated on a thumbnail this size


@dataclass(frozen=True)
class ReliefShape:
    """Closed mesh arrays in glTF axes (y up, front faces +z), model width 1 centred on the origin."""

    vertices: np.ndarray  # (n, 3) float
    faces: np.ndarray  # (m, 3) int, counter-clockwise seen from outside
    uv: np.ndarray  # (n, 2) float, OpenGL convention (v up)


def has_real_alpha(image: Image.Image) -> bool:
    """True when the image carries transparency that actually cuts something out."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return False
    alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    return bool((alpha < ALPHA_OPAQUE).any())


def grid_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    scale = resolution / max(width, height)
    return max(2, round(width * scale)), max(2, round(height * scale))


def foreground_cells(image: Image.Image, resolution: int, bg_tolerance: float) -> np.ndarray:
    """Boolean (rows, cols) grid of foreground cells; the whole frame when nothing stands out."""
    gw, gh = grid_size(image.width, image.height, resolution)
    small = np.asarray(image.convert("RGBA").resize((gw, gh), Image.Resampling.BOX), dtype=np.float32)
    if has_real_alpha(image):
        cells = small[..., 3] >= ALPHA_OPAQUE
    else:
        rgb = small[..., :3]
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        distance = np.linalg.norm(rgb - np.median(border, axis=0), axis=-1) / (255.0 * np.sqrt(3.0))
        # Opening drops speckle noise; holes inside the object usually share the background colour by accident.
        cells = ndimage.binary_fill_holes(ndimage.binary_opening(distance > bg_tolerance))
    if not cells.any():
        cells = np.ones((gh, gw), dtype=bool)
    return cells


def bridge_diagonals(cells: np.ndarray) -> np.ndarray:
    """Add a cell wherever two cells touch only at a corner, so the rim never pinches (non-manifold vertex)."""
    c = np.pad(cells, 1)
    while True:
        a, b, lo, d = c[:-1, :-1], c[:-1, 1:], c[1:, :-1], c[1:, 1:]
        main = a & d & ~b & ~lo
        anti = b & lo & ~a & ~d
        if not (main.any() or anti.any()):
            return c[1:-1, 1:-1]
        c[:-1, 1:] |= main  # fill the top-right cell of each pinched 2x2 block
        c[:-1, :-1] |= anti  # fill the top-left one


def height_field(used: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """Per-node height in grid units: 0 on the rim, the inner radius at the point farthest from it, a circular
    profile in between."""
    interior = used & ~rim
    dist = ndimage.distance_transform_edt(interior)
    radius = max(float(dist.max()), 1.0)
    x = np.clip(dist / radius, 0.0, 1.0)
    h = np.sqrt(x * (2.0 - x))
    h = ndimage.gaussian_filter(h, sigma=1.0)
    h[~interior] = 0.0
    return h / max(float(h.max()), 1e-6) * radius  # grid units, so thin parts stay thin


def build_shape(cells: np.ndarray, depth: float, rim_half: float) -> ReliefShape:
    """Closed, consistently wound mesh for a grid of foreground cells (see the module doc for the construction)."""
    gh, gw = cells.shape
    c = np.pad(cells, 1)  # a False frame so neighbour tests need no bounds checks
    used = np.zeros((gh + 3, gw + 3), dtype=bool)  # nodes of the padded grid
    for di in (0, 1):
        for dj in (0, 1):
            used[di : di + gh + 2, dj : dj + gw + 2] |= c
    ci, cj = np.nonzero(c)
    # Directed rim edges, in the front winding: left a->c, bottom c->d, right d->b, top b->a.
    edge_sets = [
        (~c[ci, cj - 1], (ci, cj), (ci + 1, cj)),
        (~c[ci + 1, cj], (ci + 1, cj), (ci + 1, cj + 1)),
        (~c[ci, cj + 1], (ci + 1, cj + 1), (ci, cj + 1)),
        (~c[ci - 1, cj], (ci, cj + 1), (ci, cj)),
    ]
    starts = [np.stack([s[0][m], s[1][m]], 1) for m, s, _ in edge_sets]
    ends = [np.stack([e[0][m], e[1][m]], 1) for m, _, e in edge_sets]
    edge_from, edge_to = np.concatenate(starts), np.concatenate(ends)
    rim = np.zeros_like(used)
    rim[edge_from[:, 0], edge_from[:, 1]] = True

    node_i, node_j = np.nonzero(used)
    index = np.full(used.shape, -1, dtype=np.int64)
    index[node_i, node_j] = np.arange(node_i.size)
    n = node_i.size

    unit = 1.0 / max(gw, gh)  # model width 1 along the longer side
    h = height_field(used, rim)[node_i, node_j] * unit  # world units; max = the shape's inner radius
    z = rim_half + depth * h
    x = ((node_j - 1) - gw / 2.0) * unit
    y = (gh / 2.0 - (node_i - 1)) * unit
    front = np.stack([x, y, z], 1)
    back = np.stack([x, y, -z], 1)

    a, b = index[ci, cj], index[ci, cj + 1]
    lo, d = index[ci + 1, cj], index[ci + 1, cj + 1]
    front_faces = np.concatenate([np.stack([a, lo, d], 1), np.stack([a, d, b], 1)])
    back_faces = front_faces[:, ::-1] + n  # mirrored surface: reversed winding faces -z
    u = index[edge_from[:, 0], edge_from[:, 1]]
    v = index[edge_to[:, 0], edge_to[:, 1]]
    walls = np.concatenate([np.stack([v, u, u + n], 1), np.stack([v, u + n, v + n], 1)])

    uv = np.stack([(node_j - 1) / gw, 1.0 - (node_i - 1) / gh], 1)
    return ReliefShape(
        vertices=np.concatenate([front, back]),
        faces=np.concatenate([front_faces, back_faces, walls]),
        uv=np.concatenate([uv, uv]),
    )


def texture_image(image: Image.Image, max_size: int) -> Image.Image:
    """RGB texture; transparent pixels take the mean foreground colour so the rim shows no dark halo.

    Done with PIL's C compositing (alpha as the paste mask) and a 64² estimate of the mean: numpy masking of a
    1024² image cost more than the whole mesh build.
    """
    rgba = image.convert("RGBA")
    if max(rgba.size) > max_size:
        rgba.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    if not has_real_alpha(rgba):
        return rgba.convert("RGB")
    small = np.asarray(rgba.resize((MEAN_SAMPLE_SIDE, MEAN_SAMPLE_SIDE), Image.Resampling.BOX), dtype=np.float32)
    opaque = small[..., 3] >= ALPHA_OPAQUE
    mean = small[..., :3][opaque].mean(axis=0) if opaque.any() else small[..., :3].mean(axis=(0, 1))
    texture = Image.new("RGB", rgba.size, tuple(int(v) for v in mean))
    texture.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return texture


def vertex_colours(image: Image.Image, uv: np.ndarray) -> np.ndarray:
    """RGBA uint8 per vertex, sampled from the image at each vertex's UV (nearest pixel)."""
    rgb = np.asarray(texture_image(image, max(image.size)))
    h, w = rgb.shape[:2]
    cols = np.clip((uv[:, 0] * (w - 1)).round().astype(int), 0, w - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * (h - 1)).round().astype(int), 0, h - 1)
    colours = rgb[rows, cols]
    return np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], 1)


def export_mesh(shape: ReliefShape, image: Image.Image, params: MeshParams, texture_size: int) -> bytes:
    if params.output_format == "stl":
        mesh = trimesh.Trimesh(shape.vertices, shape.faces, process=False)
        out = io.BytesIO()
        mesh.export(out, file_type="stl")
        return out.getvalue()
    if params.no_texture:
        visual: trimesh.visual.ColorVisuals | trimesh.visual.TextureVisuals = trimesh.visual.ColorVisuals(
            vertex_colors=vertex_colours(image, shape.uv)
        )
    else:
        texture = texture_image(image, texture_size)
        # trimesh keeps JPEG textures as JPEG (a core glTF image type); PNG-encoding a detailed 1024² texture
        # would cost ~0.3 s, most of the time budget, and the texture has no alpha to preserve.
        texture.format = "JPEG"
        # Matte and untinted: glTF's default material is fully metallic, which viewers without an environment map
        # (the studio's preview among them) draw almost black, and trimesh's default tints the texture grey.
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=texture, baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0
        )
        visual = trimesh.visual.TextureVisuals(uv=shape.uv, material=material)
    mesh = trimesh.Trimesh(shape.vertices, shape.faces, visual=visual, process=False)
    out = io.BytesIO()
    mesh.export(out, file_type="glb")
    return out.getvalue()


class ReliefBackend:
    """Silhouette-inflation image-to-3D on CPU. Deterministic: the seed only matters for text -> image."""

    name = "relief"
    supports_text = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> None:
        """Nothing to load; present for the interface."""

    def capabilities(self) -> dict[str, Capability]:
        return {}  # textures come from the image itself; the silhouette from alpha or the border colour

    def image_to_mesh(self, image: Image.Image, params: MeshParams, report: StageReporter) -> MeshArtifact:
        s = self.settings
        report.stage("silhouette", 0.1)
        cells = bridge_diagonals(foreground_cells(image, s.relief_resolution, s.relief_bg_tolerance))
        report.stage("geometry", 0.4)
        shape = build_shape(cells, s.relief_depth, s.relief_rim)
        report.stage("export", 0.7)
        data = export_mesh(shape, image, params, s.texture_size)
        return MeshArtifact(data=data, output_format=params.output_format, backend=self.name, seed=params.seed)

    def text_to_mesh(self, prompt: str, params: MeshParams, report: StageReporter) -> MeshArtifact:
        raise NotImplementedError("relief has no text mode; the service draws an image first")
