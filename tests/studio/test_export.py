"""Export: manifest, ZIP contents, Blender script, and the composed scene GLB built from the layout."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import trimesh

from studio.export import build_zip, compose, composed_glb, export_scene, instance_transforms, manifest
from studio.workspace import ImageRef, Layout, ModelRef, Scene, SceneObject, Workspace
from tests.studio.conftest import glb_bytes, png_bytes


def scene_with_models(ws: Workspace) -> Scene:
    scene = ws.create()
    scene.name = "Corner"
    table = SceneObject(
        id="obj-00000001",
        name="Table",
        prompt="a table",
        state="ready",
        layout=Layout(position=(1.0, 2.0, 0.0), size=(1.0, 0.5, 0.75), rotation_deg=90),
    )
    table.image = ImageRef(file=ws.write_image(scene.id, table.id, 11, png_bytes()), seed=11)
    table.variants = [ImageRef(file=ws.write_image(scene.id, table.id, 12, png_bytes((0, 200, 0))), seed=12)]
    table.model = ModelRef(file=ws.write_model(scene.id, table.id, 5, glb_bytes()), seed=5, backend="relief")
    chairs = SceneObject(
        id="obj-00000002",
        name="Chair",
        prompt="a chair",
        count=2,
        layout=Layout(position=(-1.0, 0.0, 0.0), size=(0.5, 0.5, 1.0)),
    )
    scene.objects = [table, chairs]
    ws.save(scene)
    return scene


def test_manifest_records_prompts_seeds_layout_and_backend(ws: Workspace) -> None:
    m = manifest(scene_with_models(ws))
    table = m["objects"][0]
    assert m["units"] == "metres" and m["backends"] == ["relief"]
    assert table["prompt"] == "a table" and table["image"]["seed"] == 11 and table["model"]["seed"] == 5
    assert table["layout"]["position"] == [1.0, 2.0, 0.0] and table["layout"]["rotation_deg"] == 90
    assert m["objects"][1]["model"] is None


def test_zip_holds_every_png_glb_manifest_and_blender_script(ws: Workspace) -> None:
    scene = scene_with_models(ws)
    data = build_zip(scene, ws, composed_glb(scene, ws))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = set(z.namelist())
        assert {
            "scene.json",
            "scene.glb",
            "import_to_blender.py",
            "README.txt",
            "images/obj-00000001-11.png",
            "images/obj-00000001-12.png",
            "models/obj-00000001-5.glb",
        } <= names
        script = z.read("import_to_blender.py").decode()
        compile(script, "import_to_blender.py", "exec")  # valid Python (bpy only exists inside Blender)
        assert "scene.json" in script and "import_scene.gltf" in script
        assert json.loads(z.read("scene.json"))["name"] == "Corner"


def test_composed_glb_loads_and_places_objects_by_layout(ws: Workspace) -> None:
    scene = scene_with_models(ws)
    loaded = trimesh.load(io.BytesIO(composed_glb(scene, ws)), file_type="glb", force="scene")
    assert len(loaded.graph.nodes_geometry) == 3  # one table + two placeholder chairs
    bounds = loaded.bounds
    # glTF is y-up: planned (x, y, z) -> (x, z, -y); the table stands on the floor at y = 0.
    assert np.isclose(bounds[0][1], 0.0, atol=1e-6)
    assert bounds[1][1] <= 1.0 + 1e-6


def test_model_is_scaled_to_fit_its_box_and_rotated() -> None:
    obj = SceneObject(
        id="obj-00000001",
        name="t",
        prompt="p",
        layout=Layout(position=(3.0, 4.0, 0.0), size=(1.0, 1.0, 1.0), rotation_deg=90),
    )
    mesh = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    (matrix,) = instance_transforms(obj, mesh.extents, mesh.bounds[0])
    placed = mesh.copy()
    placed.apply_transform(matrix)
    assert np.isclose(placed.extents.max(), 1.0)  # uniform scale: the longest side fits the box
    assert np.allclose(placed.bounds.mean(axis=0)[[0, 2]], [3.0, -4.0])  # centred at planned x, -y
    assert np.isclose(placed.extents[2], 1.0) and np.isclose(placed.extents[0], 0.25)  # turned 90° about up


def test_copies_stand_side_by_side() -> None:
    obj = SceneObject(
        id="obj-00000001", name="t", prompt="p", count=3, layout=Layout(position=(0.0, 0.0, 0.0), size=(1.0, 1.0, 1.0))
    )
    xs = [m[0, 3] for m in instance_transforms(obj, np.ones(3), np.zeros(3) - 0.5)]
    assert len(xs) == 3 and xs[0] < xs[1] < xs[2] and np.isclose(xs[1], 0.0)


def test_placeholders_make_a_layout_even_without_models(ws: Workspace) -> None:
    scene = ws.create()
    scene.objects = [SceneObject(id="obj-00000009", name="Box", prompt="p")]
    assert len(compose(scene, ws).graph.nodes_geometry) == 1


def test_export_scene_writes_zip_and_glb_inside_the_scene(ws: Workspace) -> None:
    scene = scene_with_models(ws)
    zip_path, glb_path = export_scene(scene, ws)
    assert zip_path.parent == glb_path.parent == ws.scene_dir(scene.id) / "exports"
    assert zipfile.is_zipfile(zip_path) and glb_path.read_bytes()[:4] == b"glTF"
    # Readable by the user's other tools (a viewer, Blender, a file manager), not only by this process's user.
    for path in (zip_path, glb_path, ws.scene_dir(scene.id) / "scene.json"):
        assert path.stat().st_mode & 0o044 == 0o044, (path, oct(path.stat().st_mode))


def test_picked_variant_is_zipped_once(ws: Workspace) -> None:
    scene = scene_with_models(ws)
    scene.objects[0].image = scene.objects[0].variants[0]
    data = build_zip(scene, ws, composed_glb(scene, ws))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
    assert len(names) == len(set(names))
