"""The object board's Gradio side: a fixed pool of card slots (one per possible object), filled from the scene on
screen, and the events of each card. What a card shows is decided in `board_view.py`.

Why not `@gr.render`: in Gradio 6.31 every re-render registers new event functions, so a click made while the
board re-renders (which happens at every progress tick of a 3D batch) can reach a function id that no longer
exists, and overlapping renders corrupt the session's block registry. A fixed pool has events registered once.

Stable ids, not indices: each slot carries its object's id in a hidden textbox that the browser sends with every
click, so an action always targets the object the user saw, even if the board changed in between. Updates are
diffed against what the slot already shows (`gr.skip()` otherwise), so a progress tick never resets a prompt the
user is typing.

Reads top to bottom: constants, the cards' handlers, the slot layout, the wiring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio import board, jobs
from studio.board_view import SLOT_OUTPUTS, board_changes
from studio.context import StudioContext
from studio.events import GPU, SceneOut, bind, once, stream_3d, stream_scene
from studio.workspace import Scene, Workspace

CARD_MIN_WIDTH = 230
THUMBNAIL_HEIGHT = 190


# --- handlers: each gets the scene id and the object id the slot showed when clicked ---------------------------
async def edit_prompt(ctx: StudioContext, sid: str, oid: str, text: str) -> SceneOut:
    return await once(board.edit_prompt(ctx, sid, oid, text))


async def draw_card(ctx: StudioContext, sid: str, oid: str) -> AsyncIterator[SceneOut]:
    async for value in stream_scene(board.draw_images(ctx, sid, [oid])):
        yield value


async def draw_variants(ctx: StudioContext, sid: str, oid: str, n: float) -> AsyncIterator[SceneOut]:
    async for value in stream_scene(board.make_variants(ctx, sid, oid, int(n))):
        yield value


async def pick_variant(ctx: StudioContext, sid: str, oid: str, evt: gr.SelectData) -> SceneOut:
    return await once(board.pick_variant(ctx, sid, oid, int(evt.index)))


async def upload_image(ctx: StudioContext, sid: str, oid: str, path: str) -> SceneOut:
    return await once(board.upload_image(ctx, sid, oid, path))


async def make_model(
    ctx: StudioContext,
    sid: str,
    oid: str,
    seed: float,
    ss_steps: float,
    slat_steps: float,
    ss_cfg: float,
    slat_cfg: float,
    no_texture: bool,
) -> AsyncIterator[SceneOut]:
    async for value in stream_3d(ctx, sid, [oid], seed, ss_steps, slat_steps, ss_cfg, slat_cfg, no_texture):
        yield value


async def cancel_model(ctx: StudioContext, sid: str, oid: str) -> None:
    await jobs.cancel_jobs(ctx, sid, oid)
    gr.Info("Cancelling the 3D job…")


def select_preview(oid: str) -> Any:
    return gr.Dropdown(value=oid)


async def delete_card(ctx: StudioContext, sid: str, oid: str) -> SceneOut:
    return await once(board.delete_object(ctx, sid, oid))


def board_updates(
    ws: Workspace, scene: Scene | None, shown: dict[str, Any] | None, n_slots: int, draw_blocked: str = ""
) -> tuple[list[Any], dict[str, Any]]:
    """An update for every slot output (`gr.skip()` where it already shows the right thing) and the new record."""
    changes, now = board_changes(ws, scene, shown, n_slots, draw_blocked)
    return [gr.skip() if props is None else gr.update(**props) for props in changes], now


# --- layout ----------------------------------------------------------------------------------------------------
@dataclass
class Slot:
    column: gr.Column
    oid: gr.Textbox
    header: gr.HTML
    image: gr.Image
    prompt: gr.Textbox
    use_prompt: gr.Button
    redraw: gr.Button
    n_variants: gr.Slider
    variants: gr.Button
    gallery: gr.Gallery
    upload: gr.UploadButton
    to_3d: gr.Button
    cancel: gr.Button
    show: gr.Button
    delete: gr.Button

    def outputs(self) -> list[Any]:
        """The components that follow the slot's object, in `SLOT_OUTPUTS` order."""
        return [getattr(self, name) for name in SLOT_OUTPUTS]


def build_slots(count: int) -> list[Slot]:
    """The card pool, a grid (`theme.py` lays the cards out); call inside the page layout. All slots start hidden."""
    with gr.Row(elem_id="board", elem_classes=["board"]):
        return [_build_slot() for _ in range(count)]


def _build_slot() -> Slot:
    """One card: what it is and where it stands, its picture, its actions (one of them primary, `board_view`
    decides which), and the less frequent ones folded away under "Edit"."""
    with gr.Column(min_width=CARD_MIN_WIDTH, visible=False, elem_classes=["card"]) as column:
        oid = gr.Textbox(visible=False)
        header = gr.HTML(elem_classes=["card-header"])
        image = gr.Image(
            interactive=False,
            show_label=False,
            height=THUMBNAIL_HEIGHT,
            type="filepath",
            buttons=["download", "fullscreen"],
            elem_classes=["card-thumb"],
        )
        gallery = gr.Gallery(label="Pick a variant", columns=4, height=90, allow_preview=False, visible=False)
        with gr.Row(elem_classes=["card-actions"]):
            to_3d = gr.Button("Make 3D", size="sm", interactive=False, visible=False)
            cancel = gr.Button("Cancel 3D", size="sm", visible=False)
            show = gr.Button("Preview", size="sm", visible=False)
        with gr.Row(elem_classes=["card-actions"]):
            redraw = gr.Button("New image", size="sm")
            upload = gr.UploadButton("Upload image", file_types=["image"], size="sm")
        with gr.Accordion("Edit", open=False, elem_classes=["card-edit"]):
            prompt = gr.Textbox(label="Image prompt", lines=2, max_lines=4)
            use_prompt = gr.Button("Use prompt", size="sm")
            with gr.Row(equal_height=True):
                n_variants = gr.Slider(1, board.MAX_VARIANTS, 2, step=1, label="Variants", min_width=100)
                variants = gr.Button("Draw variants", size="sm")
            delete = gr.Button("Delete object", size="sm")
    return Slot(
        column,
        oid,
        header,
        image,
        prompt,
        use_prompt,
        redraw,
        n_variants,
        variants,
        gallery,
        upload,
        to_3d,
        cancel,
        show,
        delete,
    )


# --- wiring ----------------------------------------------------------------------------------------------------
def wire_slots(
    ctx: StudioContext,
    slots: list[Slot],
    *,
    scene_id: gr.State,
    scene: list[Any],
    preview: gr.Dropdown,
    params: list[Any],
    scroll_js: str | None = None,
) -> None:
    """Register every card event once."""
    gpu = {"concurrency_id": GPU, "concurrency_limit": ctx.settings.ui_gpu_concurrency, "api_visibility": "private"}
    quiet = {"api_visibility": "private"}
    edit, draw, variants, pick = (bind(fn, ctx) for fn in (edit_prompt, draw_card, draw_variants, pick_variant))
    upload, model, cancel, delete = (bind(fn, ctx) for fn in (upload_image, make_model, cancel_model, delete_card))
    for s in slots:
        ids = [scene_id, s.oid]
        s.use_prompt.click(edit, [*ids, s.prompt], scene, **quiet).success(draw, ids, scene, **gpu)
        s.redraw.click(draw, ids, scene, **gpu)
        s.variants.click(variants, [*ids, s.n_variants], scene, **gpu)
        s.gallery.select(pick, ids, scene, **quiet)
        s.upload.upload(upload, [*ids, s.upload], scene, **quiet)
        s.to_3d.click(model, [*ids, *params], scene, **gpu)
        s.cancel.click(cancel, ids, None, **quiet)
        s.show.click(select_preview, [s.oid], [preview], js=scroll_js, **quiet)
        s.delete.click(delete, ids, scene, **quiet)
