"""Workspace: versioned scene.json, atomic writes, reload, listing, ids as the only names, nothing deleted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from studio.workspace import SCHEMA_VERSION, ChatRecord, ImageRef, JobProgress, SceneObject, Workspace, check_id
from tests.studio.conftest import png_bytes


def test_create_save_and_reload_round_trip(ws: Workspace) -> None:
    scene = ws.create()
    scene.name = "Reading corner"
    scene.objects.append(SceneObject(id="obj-00000001", name="Chair", prompt="a chair"))
    ws.save(scene)
    again = ws.load(scene.id)
    assert again.name == "Reading corner" and again.objects[0].id == "obj-00000001"
    raw = json.loads((ws.scene_dir(scene.id) / "scene.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION


def test_files_are_named_from_ids_and_seeds(ws: Workspace) -> None:
    scene = ws.create()
    rel = ws.write_image(scene.id, "obj-00000001", 42, png_bytes())
    assert rel == "images/obj-00000001-42.png"
    assert (ws.scene_dir(scene.id) / rel).read_bytes() == png_bytes()
    assert ws.write_model(scene.id, "obj-00000001", 7, b"glTF") == "models/obj-00000001-7.glb"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "..", "UPPER", "x" * 80, "/abs"])
def test_ids_that_could_escape_are_refused(ws: Workspace, bad: str) -> None:
    with pytest.raises(ValueError):
        check_id(bad)
    with pytest.raises(ValueError):
        ws.scene_dir(bad)


def test_recorded_paths_cannot_leave_the_scene_folder(ws: Workspace) -> None:
    scene = ws.create()
    with pytest.raises(ValueError, match="escapes"):
        ws.path(scene.id, "../../secret.txt")
    with pytest.raises(ValueError):
        ws.write_image(scene.id, "../x", 1, b"")


def test_atomic_write_leaves_no_temp_files(ws: Workspace) -> None:
    scene = ws.create()
    for _ in range(3):
        ws.save(scene)
    assert sorted(p.name for p in ws.scene_dir(scene.id).iterdir()) == ["scene.json"]


def test_edit_saves_on_success_and_nothing_on_error(ws: Workspace) -> None:
    scene = ws.create()

    async def run() -> None:
        async with ws.edit(scene.id) as s:
            s.name = "kept"
        with pytest.raises(RuntimeError):
            async with ws.edit(scene.id) as s:
                s.name = "half-written"
                raise RuntimeError("boom")

    asyncio.run(run())
    assert ws.load(scene.id).name == "kept"


def test_concurrent_edits_do_not_lose_updates(ws: Workspace) -> None:
    scene = ws.create()

    async def add(i: int) -> None:
        async with ws.edit(scene.id) as s:
            await asyncio.sleep(0)
            s.objects.append(SceneObject(id=f"obj-{i:08d}", name=str(i), prompt="p"))

    async def run() -> None:
        await asyncio.gather(*(add(i) for i in range(10)))

    asyncio.run(run())
    assert len(ws.load(scene.id).objects) == 10


def test_list_newest_first_and_skips_damaged_folders(ws: Workspace) -> None:
    first = ws.create()
    first.chat = [ChatRecord(role="user", content="hello")]
    ws.save(first)
    second = ws.create()
    second.name = "Second"
    second.chat = [ChatRecord(role="user", content="a deck")]
    ws.save(second)
    ws.create()  # a fresh start nobody used: not listed
    (ws.root / "broken").mkdir()
    (ws.root / "broken" / "scene.json").write_text("{nope")
    listed = ws.list()
    assert [s.id for s in listed] == [second.id, first.id]
    assert (ws.root / "broken" / "scene.json").exists()  # never touched


def test_reopen_marks_interrupted_work_for_retry(ws: Workspace) -> None:
    scene = ws.create()
    scene.objects = [
        SceneObject(id="obj-00000001", name="a", prompt="p", state="generating"),
        SceneObject(
            id="obj-00000002", name="b", prompt="p", state="ready", model_state="running", job=JobProgress(id="job-1")
        ),
        SceneObject(id="obj-00000003", name="c", prompt="p", state="generating", image=ImageRef(file="i.png", seed=1)),
    ]
    ws.save(scene)
    again = ws.reopen(scene.id)
    assert again.objects[2].state == "ready" and again.objects[2].image is not None  # a redraw keeps its image
    assert again.objects[0].state == "failed" and "retry" in again.objects[0].error.lower()
    assert again.objects[1].model_state == "failed" and again.objects[1].job is None


def test_start_over_keeps_the_old_scene(ws: Workspace, tmp_path: Path) -> None:
    old = ws.create()
    ws.write_image(old.id, "obj-00000001", 1, png_bytes())
    ws.create()
    assert ws.exists(old.id) and (ws.scene_dir(old.id) / "images" / "obj-00000001-1.png").exists()


def test_newer_schema_is_refused_with_a_message(ws: Workspace) -> None:
    scene = ws.create()
    path = ws.scene_dir(scene.id) / "scene.json"
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="newer studio"):
        ws.load(scene.id)


def test_a_scene_file_from_schema_1_still_loads_and_saves_the_same(ws: Workspace) -> None:
    """scene_v1.json was written by the studio before its chat messages were called ChatRecord."""
    old = json.loads((Path(__file__).parent / "scene_v1.json").read_text())
    folder = ws.scene_dir(old["id"])
    folder.mkdir(parents=True)
    (folder / "scene.json").write_text(json.dumps(old))
    scene = ws.load(old["id"])
    assert scene.chat == [
        ChatRecord(role="user", content="a cozy reading corner"),
        ChatRecord(role="assistant", content="Here is a plan"),
    ]
    assert [o.model_state for o in scene.objects] == ["ready", "running"] and scene.objects[1].job is not None
    ws.save(scene)
    again = json.loads((folder / "scene.json").read_text())
    assert again == {**old, "updated": again["updated"]}
