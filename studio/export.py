"""Scene export: a ZIP (every PNG and GLB, a `scene.json` manifest, a Blender import script) and one composed
scene GLB built from the planned layout with trimesh.

Axes: the plan uses Blender's convention (metres, x right, y forward, z up, rotation about z). glTF is y-up, so
the composed GLB maps (x, y, z) -> (x, z, -y). Each model is scaled uniformly to fit its planned box and stands
on its planned floor height; objects without a model yet appear as grey boxes of their planned size, so the
composition always shows the whole layout.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from studio.workspace import Scene, SceneObject, Workspace, atomic_write

MANIFEST_FORMAT = "chat3d-scene-export"
MANIFEST_VERSION = 1
COPY_GAP = 1.15  # copies of one object stand side by side, 15 % of their width apart
PLACEHOLDER_RGBA = (160, 160, 160, 255)


def manifest(scene: Scene, composed: str | None = "scene.glb") -> dict[str, Any]:
    """What the ZIP holds and where each object goes; paths are relative to the ZIP root."""
    objects = []
    for o in scene.objects:
        objects.append(
            {
                "id": o.id,
                "name": o.name,
                "prompt": o.prompt,
                "count": o.count,
                "layout": {
                    "position": list(o.layout.position),
                    "size": list(o.layout.size),
                    "rotation_deg": o.layout.rotation_deg,
                },
                "image": o.image.model_dump() if o.image else None,
                "variants": [v.model_dump() for v in o.variants],
                "model": o.model.model_dump() if o.model else None,
            }
        )
    backends = sorted({o.model.backend for o in scene.objects if o.model and o.model.backend})
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "scene_id": scene.id,
        "name": scene.name,
        "request": scene.request,
        "units": "metres",
        "axes": "x right, y forward, z up; rotation about z",
        "backends": backends,
        "composed": composed,
        "exported": time.time(),
        "objects": objects,
    }


# --- composition -----------------------------------------------------------------------------------------------
def _to_gltf(x: float, y: float, z: float) -> list[float]:
    return [x, z, -y]


def instance_transforms(obj: SceneObject, extents: np.ndarray, bounds_min: np.ndarray) -> list[np.ndarray]:
    """4x4 transforms (glTF axes) placing `count` copies of a mesh with these bounds in the object's box."""
    (x, y, z), (w, d, h) = obj.layout.position, obj.layout.size
    want = np.array([w, h, d])  # glTF order: width on x, height on y, depth on z
    scale = float(np.min(want / np.maximum(extents, 1e-9)))
    centre = bounds_min + extents / 2
    base = trimesh.transformations.translation_matrix([-centre[0], -bounds_min[1], -centre[2]])
    base = trimesh.transformations.scale_matrix(scale) @ base
    spin = trimesh.transformations.rotation_matrix(math.radians(obj.layout.rotation_deg), [0, 1, 0])
    out = []
    for i in range(obj.count):
        offset = (i - (obj.count - 1) / 2) * w * COPY_GAP  # along the object's own width, before rotation
        local = trimesh.transformations.translation_matrix([offset, 0, 0]) @ base
        out.append(trimesh.transformations.translation_matrix(_to_gltf(x, y, z)) @ spin @ local)
    return out


def _placeholder(obj: SceneObject) -> trimesh.Trimesh:
    w, d, h = obj.layout.size
    box = trimesh.creation.box(extents=[w, h, d])
    box.visual.face_colors = PLACEHOLDER_RGBA
    return box


def compose(scene: Scene, ws: Workspace) -> trimesh.Scene:
    """One trimesh scene holding every object (or its placeholder) at its planned place; textures are kept
    because each model's own nodes are copied with their transforms, not merged into one mesh."""
    out = trimesh.Scene()
    for obj in scene.objects:
        part = _load_model(ws, scene.id, obj)
        if part is None:
            part = trimesh.Scene(_placeholder(obj))
        bounds = np.asarray(part.bounds)
        for i, matrix in enumerate(instance_transforms(obj, bounds[1] - bounds[0], bounds[0])):
            for node in part.graph.nodes_geometry:
                local, geom_name = part.graph[node]
                out.add_geometry(
                    part.geometry[geom_name],
                    node_name=f"{obj.id}-{i}-{node}",
                    geom_name=f"{obj.id}-{geom_name}",
                    transform=matrix @ local,
                )
    return out


def _load_model(ws: Workspace, scene_id: str, obj: SceneObject) -> trimesh.Scene | None:
    """The object's GLB as a scene, or None when it has none (or it cannot be read)."""
    if obj.model is None or not obj.model.file.endswith(".glb"):
        return None
    path = ws.path(scene_id, obj.model.file)
    if not path.is_file():
        return None
    try:
        part = trimesh.load(path, file_type="glb", force="scene")
    except Exception:  # a damaged file must not break the export of everything else
        return None
    return part if part.geometry else None


def composed_glb(scene: Scene, ws: Workspace) -> bytes:
    data = compose(scene, ws).export(file_type="glb")
    return data if isinstance(data, bytes) else bytes(data)


# --- ZIP -------------------------------------------------------------------------------------------------------
def scene_files(scene: Scene) -> list[str]:
    """Every image (chosen and variants) and model the scene's objects refer to, relative to the scene folder."""
    files: list[str] = []
    for o in scene.objects:
        for ref in (o.image, *o.variants, o.model):
            if ref is not None and ref.file not in files:  # a picked variant is also the card's image
                files.append(ref.file)
    return files


def build_zip(scene: Scene, ws: Workspace, glb: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scene.json", json.dumps(manifest(scene), indent=2, ensure_ascii=False))
        z.writestr("scene.glb", glb)
        z.writestr("import_to_blender.py", BLENDER_SCRIPT)
        z.writestr("README.txt", README_TEXT.format(name=scene.name))
        for rel in scene_files(scene):
            path = ws.path(scene.id, rel)
            if path.is_file():
                z.write(path, rel)
    return buf.getvalue()


def export_scene(scene: Scene, ws: Workspace) -> tuple[Path, Path]:
    """Write `exports/<scene-id>-<time>.zip` and `exports/<scene-id>-<time>.glb`; returns both paths. A folder that
    cannot take them raises StorageError before the (slow) composition starts."""
    ws.check_writable(scene.id, "exports")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    glb = composed_glb(scene, ws)
    glb_path = ws.path(scene.id, f"exports/{scene.id}-{stamp}.glb")
    zip_path = ws.path(scene.id, f"exports/{scene.id}-{stamp}.zip")
    atomic_write(glb_path, glb)
    atomic_write(zip_path, build_zip(scene, ws, glb))
    return zip_path, glb_path


README_TEXT = """{name}

scene.json            the manifest: every object's prompt, seeds, layout (metres, z up) and files
scene.glb             all objects composed at their planned places (opens in any glTF viewer)
images/, models/      each object's concept image(s) and 3D model
import_to_blender.py  in Blender: Scripting tab -> Open -> Run Script; it places every model by the manifest
"""

BLENDER_SCRIPT = '''"""Import a chat-to-3D scene into Blender, placing each model as scene.json says.

Run from Blender's Scripting tab (Open, then Run Script) with this file inside the unzipped export folder, or:
    blender --python import_to_blender.py
Units are metres; x right, y forward, z up; rotation about z in degrees. Each model is scaled uniformly to fit
its planned box and set on its planned floor height; `count` copies stand side by side.
"""
import json
import math
import os

import bpy
from mathutils import Vector

HERE = os.path.dirname(os.path.abspath(__file__))
GAP = 1.15


def import_glb(path):
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=path)
    return [o for o in bpy.data.objects if o not in before]


def bounds(objs):
    pts = [o.matrix_world @ Vector(c) for o in objs if o.type == "MESH" for c in o.bound_box]
    lo = Vector((min(p.x for p in pts), min(p.y for p in pts), min(p.z for p in pts)))
    hi = Vector((max(p.x for p in pts), max(p.y for p in pts), max(p.z for p in pts)))
    return lo, hi


def place(entry, copy_index):
    model = entry.get("model") or {}
    path = os.path.join(HERE, model.get("file") or "")
    if not model.get("file", "").endswith(".glb") or not os.path.isfile(path):
        print("skipping", entry["name"], "(no model)")
        return
    objs = import_glb(path)
    meshes = [o for o in objs if o.type == "MESH"]
    if not meshes:
        return
    bpy.context.view_layer.update()
    lo, hi = bounds(meshes)
    size = entry["layout"]["size"]
    ext = hi - lo
    scale = min(size[0] / max(ext.x, 1e-9), size[1] / max(ext.y, 1e-9), size[2] / max(ext.z, 1e-9))
    root = bpy.data.objects.new(f"{entry['name']} {copy_index + 1}", None)
    bpy.context.collection.objects.link(root)
    centre = (lo + hi) / 2
    for o in objs:
        if o.parent is None:
            o.parent = root
            o.location -= Vector((centre.x, centre.y, lo.z))
    x, y, z = entry["layout"]["position"]
    offset = (copy_index - (entry["count"] - 1) / 2) * size[0] * GAP
    angle = math.radians(entry["layout"]["rotation_deg"])
    root.scale = (scale, scale, scale)
    root.rotation_euler = (0.0, 0.0, angle)
    root.location = (x + offset * math.cos(angle), y + offset * math.sin(angle), z)


def main():
    with open(os.path.join(HERE, "scene.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    for entry in manifest["objects"]:
        for i in range(int(entry.get("count", 1))):
            place(entry, i)
    print("imported scene", manifest["name"])


main()
'''
