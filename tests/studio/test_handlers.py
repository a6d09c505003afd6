"""The page's handlers as plain functions (fast, fake services): bound to the context without losing what Gradio
reads from a handler, and each event reads or validates its scene once and passes it along."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from typing import Any

import gradio as gr
import pytest
from gradio.helpers import special_args

from studio import board_slots, handlers
from studio.board_view import SLOT_OUTPUTS
from studio.context import StudioContext
from studio.events import bind, scene_payload
from studio.workspace import ImageRef, Scene, SceneObject, Workspace
from tests.studio.conftest import png_bytes
from tests.studio.fakes import NO_EDIT, PLAN, edit

N_STATUS_OUTPUTS, N_PREVIEW_OUTPUTS = 7, 4  # header, five buttons, draw_blocked; image, model, download, shown


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often scene.json is loaded from disk and a scene payload is validated."""
    counts: Counter[str] = Counter()
    load, validate = Workspace.load, Scene.model_validate

    def counted_load(self: Workspace, scene_id: str) -> Scene:
        counts["loads"] += 1
        return load(self, scene_id)

    def counted_validate(cls: type[Scene], *args: Any, **kwargs: Any) -> Scene:
        counts["validations"] += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(Workspace, "load", counted_load)
    monkeypatch.setattr(Scene, "model_validate", classmethod(counted_validate))
    return counts


async def last(gen: Any) -> Any:
    return [value async for value in gen][-1]


def turn(ctx: StudioContext, text: str, sid: str | None) -> str:
    """One /chat turn; the scene id it ends on."""
    history = [{"role": "user", "content": text}]
    return asyncio.run(last(handlers.respond(ctx, history, sid)))[-1]


def test_bind_keeps_what_gradio_reads(make_ctx: Any) -> None:
    ctx = make_ctx()
    pick = bind(board_slots.pick_variant, ctx)
    assert pick.__name__ == "pick_variant" and list(inspect.signature(pick).parameters) == ["sid", "oid", "evt"]
    assert special_args(pick)[2] == 2  # Gradio finds the gr.SelectData parameter, so the click's data reaches it
    generate = bind(handlers.generate_all_3d, ctx)
    assert list(inspect.signature(generate).parameters) == [
        "sid",
        "seed",
        "ss_steps",
        "slat_steps",
        "ss_cfg",
        "slat_cfg",
        "no_texture",
    ]
    assert inspect.isasyncgenfunction(generate) and inspect.iscoroutinefunction(bind(handlers.refresh_status, ctx))
    assert not inspect.iscoroutinefunction(bind(handlers.restore, ctx))
    assert bind(handlers.get_scene, ctx)(None) == (None, None)


def test_a_plan_turn_reads_its_scene_once(make_ctx: Any, services: Any, reads: Counter[str]) -> None:
    ctx = make_ctx()
    services[2]["plans"] = [json.dumps(PLAN)]
    sid = turn(ctx, "a cozy reading corner", None)
    assert reads["loads"] == 0  # a new scene is built in memory and saved once

    services[2]["plans"] = [edit(remove=["Floor lamp"])]
    reads.clear()
    assert turn(ctx, "remove the lamp", sid) == sid
    assert reads["loads"] == 2  # read once for the turn, once more under the lock to change it
    assert [o.name for o in ctx.workspace.load(sid).objects] == ["Armchair"]

    services[2]["plans"] = [json.dumps(NO_EDIT)]
    reads.clear()
    assert turn(ctx, "a pirate ship deck", sid) == sid  # plan mode on a scene with objects edits it
    assert reads["loads"] == 2  # nothing changed: the scene read under the lock is the one shown


def test_ask_mode_answers_and_keeps_the_scene(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    services[2]["plans"] = [json.dumps(PLAN)]
    sid = turn(ctx, "a cozy reading corner", None)
    history = [{"role": "user", "content": "what is in my scene?"}]
    outputs = asyncio.run(last(handlers.respond(ctx, history, sid, "ask")))
    assert outputs[0][-1] == {"role": "assistant", "content": "Hello there!"} and outputs[-1] == sid
    assert "response_format" not in services[2]["log"][-1]
    assert "Armchair" in services[2]["log"][-1]["messages"][0]["content"]  # the system prompt knows the scene


def test_send_is_refused_and_labelled_while_a_message_is_answered() -> None:
    assert handlers.add_user_message(" a deck ", [], "plan", "") == (
        "",
        [{"role": "user", "content": "a deck"}],
        "planning…",
    )
    assert handlers.add_user_message("hi", [], "ask", "")[2] == "answering…"
    with pytest.raises(gr.Error, match="still planning"):
        handlers.add_user_message("more", [], "plan", "planning…")
    with pytest.raises(gr.Error, match="still planning"):
        handlers.new_scene(None, None, "planning…")  # type: ignore[arg-type]


def test_a_scene_change_validates_it_once_and_reads_no_file(make_ctx: Any, reads: Counter[str]) -> None:
    ctx = make_ctx()
    scene = ctx.workspace.create()
    chair = SceneObject(id="obj-00000001", name="Chair", prompt="a chair", state="ready")
    chair.image = ImageRef(file=ctx.workspace.write_image(scene.id, chair.id, 5, png_bytes()), seed=5)
    scene.objects = [chair, SceneObject(id="obj-00000002", name="Lamp", prompt="a lamp")]
    n_slots = ctx.settings.ui_max_objects
    reads.clear()

    out = asyncio.run(handlers.show_scene(ctx, scene_payload(scene), {}, chair.id, [None, None]))

    assert reads == {"validations": 1}
    n_cards = n_slots * len(SLOT_OUTPUTS)
    assert len(out) == n_cards + 3 + N_STATUS_OUTPUTS + N_PREVIEW_OUTPUTS
    cards, shown, title, preview = out[:n_cards], out[n_cards], out[n_cards + 1], out[n_cards + 2]
    assert "Chair" not in title and "2 objects · 1 image · 0 models" in title
    assert cards[SLOT_OUTPUTS.index("prompt")]["value"] == "a chair" and shown["1.prompt"] == {"value": "a lamp"}
    assert preview.choices == [("Chair", chair.id), ("Lamp", "obj-00000002")] and preview.value == chair.id
    header, *buttons, draw_blocked = out[n_cards + 3 : n_cards + 3 + N_STATUS_OUTPUTS]
    assert "LLM ready" in header and draw_blocked == ""
    assert [b.interactive for b in buttons] == [True, True, True, False, True]  # send, draw, 3D, cancel, export
    image, model, _, files = out[-N_PREVIEW_OUTPUTS:]
    assert image == files[0] == str(ctx.workspace.path(scene.id, chair.image.file)) and model is None


def test_a_scene_change_leaves_an_unchanged_preview_alone(make_ctx: Any) -> None:
    ctx = make_ctx()
    scene = ctx.workspace.create()
    scene.objects = [SceneObject(id="obj-00000001", name="Chair", prompt="a chair")]
    out = asyncio.run(handlers.show_scene(ctx, scene_payload(scene), {}, "obj-00000001", [None, None]))
    assert out[-N_PREVIEW_OUTPUTS:-1] == [gr.skip()] * 3  # no 3D viewer reload
    gone = asyncio.run(handlers.show_scene(ctx, scene_payload(scene), {}, "obj-deleted", [None, "old.glb"]))
    assert gone[-N_PREVIEW_OUTPUTS - N_STATUS_OUTPUTS - 1].value is None  # the deleted object is deselected
    assert gone[-N_PREVIEW_OUTPUTS:-2] == [None, None]  # and its pictures cleared


def test_the_3d_batch_reads_the_scene_once_and_always_answers(make_ctx: Any, reads: Counter[str]) -> None:
    ctx = make_ctx()
    scene = ctx.workspace.create()  # nothing has an image: there is nothing to submit
    reads.clear()

    async def run() -> list[Any]:
        return [v async for v in handlers.generate_all_3d(ctx, scene.id, 0, 12, 12, 7.5, 3.0, False)]

    (only,) = asyncio.run(run())
    assert only[0]["id"] == scene.id and reads["loads"] == 1
