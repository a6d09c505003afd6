"""What the page shows: status header and which actions are enabled, card texts, and board updates that send only
what changed (so a progress tick never overwrites a prompt the user is typing)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from config import Settings
from studio.board_slots import board_updates
from studio.board_view import SLOT_OUTPUTS, board_changes, card_header, model_status, preview_choices, preview_files
from studio.clients import Health
from studio.context import HealthSnapshot, HealthWatch, StudioContext
from studio.status import gates, header_html
from studio.words import plural
from studio.workspace import ImageRef, JobProgress, ModelRef, Scene, SceneObject, Workspace

READY = Health("ready", "ready", 0, {"backends": {"imagegen": {"state": "ready", "detail": "ok"}}})


def snapshot(llm: Health = READY, trellis: Health = READY) -> HealthSnapshot:
    return HealthSnapshot(llm, trellis)


def scene_with(*objects: SceneObject) -> Scene:
    return Scene(id="20260101-000000-abcdef", objects=list(objects))


def test_header_shows_state_reason_and_queue_depth() -> None:
    html = header_html(snapshot(llm=Health("loading", "warming up the model"), trellis=Health("ready", "ok", 3)))
    assert "LLM loading" in html and "warming up the model" in html  # the service's reason, under Details
    assert "chat opens when it is ready" in html  # what it means for the user
    assert "3D ready" in html and "3 jobs in the 3D queue" in html


def test_actions_are_disabled_with_a_reason_until_possible() -> None:
    waiting = SceneObject(id="obj-00000001", name="a", prompt="p")
    g = gates(snapshot(llm=Health("down", "not reachable")), scene_with(waiting))
    assert g.send == (False, "Send (LLM down)")
    assert g.draw[0] is True and g.all3d[0] is False  # nothing has an image yet
    assert gates(snapshot(), None).export[0] is False


def test_imagegen_off_disables_drawing_and_says_upload() -> None:
    off = Health("ready", "ready", 0, {"backends": {"imagegen": {"state": "off", "detail": "no image model"}}})
    g = gates(snapshot(trellis=off), scene_with(SceneObject(id="obj-00000001", name="a", prompt="p")))
    assert g.draw == (False, "Draw images (text-to-image off)")
    assert "upload an image for each object" in header_html(snapshot(trellis=off))


def test_header_says_what_the_3d_service_cannot_make() -> None:
    parts = {
        "texture": {"state": "off", "detail": "nvdiffrast.torch: ModuleNotFoundError"},
        "background_removal": {"state": "ready", "detail": "rembg available"},
    }
    html = header_html(snapshot(trellis=Health("ready", "ready", 0, {"backends": parts})))
    assert "cannot bake textures" in html and "nvdiffrast.torch: ModuleNotFoundError" in html  # the reason: tooltip
    assert "transparent background" not in html
    assert "textures" not in header_html(snapshot())  # a service that reports no parts can make everything


def test_card_texts_show_state_error_and_job_progress() -> None:
    obj = SceneObject(id="obj-00000001", name="Lamp", prompt="p", count=2, state="filtered", error="flagged")
    assert "×2" in card_header(obj) and "filtered" in card_header(obj) and "flagged" in card_header(obj)
    obj.model_state, obj.job = "running", JobProgress(id="j", stage="sampling", progress=0.42)
    assert model_status(obj) == "3D running — sampling · 42 %"
    obj.model_state, obj.job = "queued", JobProgress(id="j", queue_position=3)
    assert "position 3" in model_status(obj)


def test_board_updates_send_only_changes(tmp_path: Path) -> None:
    ctx = StudioContext.from_settings(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    obj = SceneObject(
        id="obj-00000001",
        name="Lamp",
        prompt="a lamp",
        state="ready",
        image=ImageRef(file="images/obj-00000001-1.png", seed=1),
    )
    first, shown = board_updates(ctx.workspace, scene_with(obj), {}, 2)
    n = len(SLOT_OUTPUTS)
    assert len(first) == 2 * n
    assert first[0]["visible"] is True and first[SLOT_OUTPUTS.index("prompt")]["value"] == "a lamp"
    assert first[n] == gr.skip() or first[n]["visible"] is False  # second slot hidden

    obj.model_state, obj.job = "running", JobProgress(id="j", progress=0.5)
    again, _ = board_updates(ctx.workspace, scene_with(obj), shown, 2)
    assert again[SLOT_OUTPUTS.index("prompt")] == gr.skip()  # the prompt is untouched: typing survives progress ticks
    assert "making 3D" in again[SLOT_OUTPUTS.index("header")]["value"]
    assert again[SLOT_OUTPUTS.index("cancel")]["visible"] is True


def test_board_changes_are_plain_props_and_none_where_unchanged(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    obj = SceneObject(id="obj-00000001", name="Lamp", prompt="a lamp")
    changes, shown = board_changes(ws, scene_with(obj), {}, 2)
    assert changes[SLOT_OUTPUTS.index("prompt")] == {"value": "a lamp"}
    assert changes[SLOT_OUTPUTS.index("to_3d")]["interactive"] is False  # no image yet
    assert changes[len(SLOT_OUTPUTS)] == {"visible": False}  # the second slot stays hidden
    again, same = board_changes(ws, scene_with(obj), shown, 2)
    assert again == [None] * (2 * len(SLOT_OUTPUTS)) and same == shown


def test_preview_keeps_its_choice_while_the_object_exists(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    chair = SceneObject(id="obj-00000001", name="Chair", prompt="p", image=ImageRef(file="images/c-1.png", seed=1))
    chair.model = ModelRef(file="models/c-1.glb")
    lamp = SceneObject(id="obj-00000002", name="Lamp", prompt="p")
    scene = scene_with(chair, lamp)
    assert preview_choices(scene, chair.id) == ([("Chair", chair.id), ("Lamp", lamp.id)], chair.id)
    assert preview_choices(scene, "obj-deleted")[1] is None and preview_choices(None, chair.id) == ([], None)
    folder = ws.scene_dir(scene.id)
    assert preview_files(ws, scene, chair.id) == [str(folder / "images/c-1.png"), str(folder / "models/c-1.glb")]
    assert preview_files(ws, scene, lamp.id) == preview_files(ws, None, lamp.id) == [None, None]


def test_a_slow_service_is_busy_until_checks_fail_in_a_row() -> None:
    watch = HealthWatch(failures_down=3)
    assert watch.see(Health("ready", "ok", 0)).state == "ready"
    slow = Health("busy", "no answer within 5 s", failure="timeout")
    assert [watch.see(slow).state for _ in range(3)] == ["busy", "busy", "down"]
    assert watch.see(Health("ready", "ok", 0)).state == "ready"  # one answer resets the count
    assert watch.see(slow).state == "busy"
    never = HealthWatch(failures_down=3)  # nothing has ever answered, and nothing listens: down at once
    assert never.see(Health("down", "not reachable", failure="unreachable")).state == "down"


def test_counts_read_as_words() -> None:
    assert [plural(n, "object") for n in (0, 1, 2)] == ["0 objects", "1 object", "2 objects"]
