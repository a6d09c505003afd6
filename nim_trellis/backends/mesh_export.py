"""Untextured output: TRELLIS's extracted mesh, simplified to the face budget, as a vertex-coloured GLB or an STL.

Colours come from the first three vertex attributes of upstream's `MeshExtractResult`; the mesh is rotated from
TRELLIS's z-up to glTF's y-up as upstream's `to_glb` does (STL too, so both formats of one request line up).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from nim_trellis.backends.base import OutputFormat
from nim_trellis.backends.mesh_simplify import Mesh, simplify

Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)


def simplified(extracted: Any, max_faces: int, *, colours: bool = True) -> Mesh:
    """Upstream's mesh (on its device) within `max_faces`, with RGB colours in 0..1 when asked for."""
    rgb = (
        extracted.vertex_attrs[:, :3].float().clamp(0.0, 1.0)
        if colours and extracted.vertex_attrs is not None
        else None
    )
    return simplify(Mesh(extracted.vertices.float(), extracted.faces.long(), rgb), max_faces)


def encode(mesh: Mesh, output_format: OutputFormat) -> bytes:
    """GLB (with vertex colours when the mesh has them) or binary STL."""
    import trimesh

    vertices = mesh.vertices.detach().float().cpu().numpy() @ Z_UP_TO_Y_UP
    faces = mesh.faces.detach().cpu().numpy()
    colours = None
    if mesh.colours is not None and output_format == "glb":
        rgb = (mesh.colours.detach().float().cpu().numpy() * 255).round().astype(np.uint8)
        colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    out = io.BytesIO()
    trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=False).export(out, file_type=output_format)
    return out.getvalue()
