"""A disk that cannot save, as the user meets it (fast, fake services, the handlers as the page binds them): every
action that cannot save says "Could not save: <where> <why>" (the chat as its reply, buttons as a Gradio error) and
changes nothing: scene.json as it was, no temp file, no half a result.

The tests run as root, for whom permission bits stop nothing: a regular file standing where a folder must be stops
every write as a read-only or full disk would, and a read-only or full disk itself is an error injected where the
kernel reports it (creating the temp file; at fsync, with the temp file already written).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from studio import board_slots, handlers
from studio.context import StudioContext
from studio.events import bind
from studio.workspace import Scene
from tests.studio.conftest import glb_bytes, png_bytes
from tests.studio.fakes import PLAN, edit

IN_THE_WAY = "is not a directory (a file is in the way)"
THREE_D = (0, 12, 12, 7.5, 3.0, False)  # seed, steps and guidance as the page sends them


async def drain(gen: Any) -> list[Any]:
    return [value async for value in gen]


def chat(ctx: StudioContext, text: str, sid: str | None) -> tuple[str, str | None]:
    """One chat turn as the page sends it: the reply shown last, and the scene id the page keeps."""
    outputs = asyncio.run(drain(bind(handlers.respond, ctx)([{"role": "user", "content": text}], sid, "plan")))
    history, *_, kept = outputs[-1]
    return history[-1]["content"], kept


def planned(ctx: StudioContext, services: Any) -> Scene:
    services[2]["plans"] = [json.dumps(PLAN)]
    _, sid = chat(ctx, "a cozy reading corner", None)
    assert sid is not None
    return ctx.workspace.load(sid)


def drawn(ctx: StudioContext, services: Any) -> Scene:
    scene = planned(ctx, services)
    asyncio.run(drain(bind(handlers.generate_images, ctx)(scene.id)))
    return ctx.workspace.load(scene.id)


def block(folder: Path) -> Path:
    """A regular file where `folder` must be."""
    if folder.is_dir():
        folder.rmdir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where a folder must be")
    return folder


def scene_json(ctx: StudioContext, scene: Scene) -> bytes:
    return (ctx.workspace.scene_dir(scene.id) / "scene.json").read_bytes()


def leftovers(ctx: StudioContext) -> list[str]:
    """Temp files of a save, or storage probes, left behind anywhere under DATA_DIR."""
    data = Path(ctx.settings.data_dir)
    return sorted(p.name for p in data.rglob(".*") if p.name.endswith(".tmp") or "storage-check" in p.name)


def full_disk(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def refusal(run: Any) -> str:
    """The Gradio error an action ends with."""
    with pytest.raises(gr.Error) as caught:
        run()
    return str(caught.value.message)


# --- chat -------------------------------------------------------------------------------------------------------
def test_a_new_plan_that_cannot_be_saved_says_why_in_the_reply(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scenes = block(ctx.workspace.root)  # DATA_DIR/scenes
    services[2]["plans"] = [json.dumps(PLAN)]
    reply, sid = chat(ctx, "a cozy reading corner", None)
    assert reply == f"Could not save: DATA_DIR {scenes} {IN_THE_WAY} (Not a directory). Nothing was changed."
    assert sid is None and scenes.is_file() and ctx.workspace.list() == []


def test_a_plan_edit_on_a_full_disk_leaves_the_scene_as_it_was(
    make_ctx: Any, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx()
    scene = planned(ctx, services)
    before = scene_json(ctx, scene)
    monkeypatch.setattr(os, "fsync", full_disk)  # the temp file is written by now: it must not stay behind
    services[2]["plans"] = [edit(remove=["Floor lamp"])]
    reply, sid = chat(ctx, "remove the lamp", scene.id)
    folder = ctx.workspace.scene_dir(scene.id)
    assert reply == (
        f"Could not save: DATA_DIR {folder} is on a full disk (No space left on device). Nothing was changed."
    )
    assert sid == scene.id and scene_json(ctx, scene) == before and leftovers(ctx) == []


# --- buttons ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failing", "code", "words"),
    [
        ("tempfile.mkstemp", errno.EROFS, "is read-only (Read-only file system)"),
        ("tempfile.mkstemp", errno.EACCES, "is not writable (Permission denied)"),
        ("os.fsync", errno.ENOSPC, "is on a full disk (No space left on device)"),
    ],
)
def test_start_over_says_why_the_disk_cannot_save(
    make_ctx: Any, monkeypatch: pytest.MonkeyPatch, failing: str, code: int, words: str
) -> None:
    ctx = make_ctx()

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(failing, fails)
    message = refusal(lambda: bind(handlers.new_scene, ctx)(None, ""))
    assert message.startswith(f"Could not save: DATA_DIR {ctx.workspace.root}/") and message.endswith(f"{words}.")
    assert list(ctx.workspace.root.iterdir()) == [] and leftovers(ctx) == []  # not even an empty scene folder


def test_start_over_with_a_file_in_the_way_names_it(make_ctx: Any) -> None:
    ctx = make_ctx()
    scenes = block(ctx.workspace.root)
    message = refusal(lambda: bind(handlers.new_scene, ctx)(None, ""))
    assert message == f"Could not save: DATA_DIR {scenes} {IN_THE_WAY} (Not a directory)."
    assert scenes.read_text() == "a file where a folder must be"


def test_drawing_that_cannot_save_its_images_changes_no_card(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = planned(ctx, services)
    images = block(ctx.workspace.scene_dir(scene.id) / "images")
    before = scene_json(ctx, scene)
    message = refusal(lambda: asyncio.run(drain(bind(handlers.generate_images, ctx)(scene.id))))
    assert message == f"Could not save: DATA_DIR {images} {IN_THE_WAY} (File exists)."
    assert scene_json(ctx, scene) == before and leftovers(ctx) == []
    assert services[3]["log"] == []  # nothing was drawn for nothing


def test_an_image_that_cannot_be_saved_fails_its_card(make_ctx: Any, services: Any) -> None:
    """The disk fills while the images are drawn: each card says why, none is left spinning."""
    ctx = make_ctx()
    scene = planned(ctx, services)
    images = ctx.workspace.scene_dir(scene.id) / "images"

    def draw_then_fill_the_disk(prompt: str, seed: int) -> bytes:
        block(images)
        return png_bytes()

    services[3]["draw"] = draw_then_fill_the_disk
    asyncio.run(drain(bind(handlers.generate_images, ctx)(scene.id)))
    cards = ctx.workspace.load(scene.id).objects
    assert [(o.state, o.image) for o in cards] == [("failed", None)] * 2
    assert all(o.error == f"Could not save: DATA_DIR {images} {IN_THE_WAY} (File exists)." for o in cards)
    assert leftovers(ctx) == []


def test_3d_that_cannot_save_its_models_submits_nothing(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = drawn(ctx, services)
    models = block(ctx.workspace.scene_dir(scene.id) / "models")
    before, jobs = scene_json(ctx, scene), len(services[3]["_jobs"])
    message = refusal(lambda: asyncio.run(drain(bind(handlers.generate_all_3d, ctx)(scene.id, *THREE_D))))
    assert message == f"Could not save: DATA_DIR {models} {IN_THE_WAY} (File exists)."
    assert scene_json(ctx, scene) == before and leftovers(ctx) == []
    assert len(services[3]["_jobs"]) == jobs  # no GPU time spent on models that could not be kept


def test_a_model_that_cannot_be_saved_fails_its_card(make_ctx: Any, services: Any) -> None:
    """The disk fills while the jobs run: the finished job's card says why."""
    ctx = make_ctx()
    scene = drawn(ctx, services)
    models = ctx.workspace.scene_dir(scene.id) / "models"

    def model_then_fill_the_disk(body: dict[str, Any]) -> bytes:
        block(models)
        return glb_bytes()

    services[3]["model"] = model_then_fill_the_disk
    asyncio.run(drain(bind(handlers.generate_all_3d, ctx)(scene.id, *THREE_D)))
    cards = ctx.workspace.load(scene.id).objects
    assert [(o.model_state, o.model, o.job) for o in cards] == [("failed", None, None)] * 2
    assert all(o.model_error == f"Could not save: DATA_DIR {models} {IN_THE_WAY} (File exists)." for o in cards)
    assert models.is_file() and leftovers(ctx) == []


def test_export_that_cannot_be_saved_says_why(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = planned(ctx, services)
    exports = block(ctx.workspace.scene_dir(scene.id) / "exports")
    before = scene_json(ctx, scene)
    message = refusal(lambda: asyncio.run(bind(handlers.export, ctx)(scene.id)))
    assert message == f"Could not save: DATA_DIR {exports} {IN_THE_WAY} (File exists)."
    assert scene_json(ctx, scene) == before and leftovers(ctx) == [] and exports.is_file()


def test_an_upload_that_cannot_be_saved_keeps_the_card(make_ctx: Any, services: Any, tmp_path: Path) -> None:
    ctx = make_ctx()
    scene = planned(ctx, services)
    images = block(ctx.workspace.scene_dir(scene.id) / "images")
    upload = tmp_path / "chair.png"
    upload.write_bytes(png_bytes())
    before = scene_json(ctx, scene)
    card = scene.objects[0].id
    message = refusal(lambda: asyncio.run(bind(board_slots.upload_image, ctx)(scene.id, card, str(upload))))
    assert message == f"Could not save: DATA_DIR {images} {IN_THE_WAY} (File exists)."
    assert scene_json(ctx, scene) == before and leftovers(ctx) == []


def test_a_scene_opens_on_a_full_disk(make_ctx: Any, services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening only shows the scene: a disk that cannot take the "interrupted" notes does not hide it."""
    ctx = make_ctx()
    scene = planned(ctx, services)
    with_spinner = scene.model_copy(
        update={"objects": [o.model_copy(update={"state": "generating"}) for o in scene.objects]}
    )
    ctx.workspace.save(with_spinner)  # drawing when the studio stopped
    before = scene_json(ctx, scene)
    monkeypatch.setattr(os, "fsync", full_disk)
    sid, shown, *_ = bind(handlers.open_scene, ctx)(scene.id, "")
    assert sid == scene.id and {o["state"] for o in shown["objects"]} == {"failed"}  # marked interrupted
    assert scene_json(ctx, scene) == before and leftovers(ctx) == []
