"""The object board: a fixed pool of card slots (one per possible object), filled from the scene on screen.

Why not `@gr.render`: in Gradio 6.31 every re-render registers new event functions, so a click made while the
board re-renders (which happens at every progress tick of a 3D batch) can reach a function id that no longer
exists, and overlapping renders corrupt the session's block registry. A fixed pool has events registered once.

Stable ids, not indices: each slot carries its object's id in a hidden textbox that the browser sends with every
click, so an action always targets the object the user saw, even if the board changed in between. Updates are
diffed against what the slot already shows (`gr.skip()` otherwise), so a progress tick never resets a prompt the
user is typing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio import board, jobs
from studio.context import StudioContext
from studio.planner import md_escape
from studio.workspace import Scene, SceneObject

CARDS_PER_ROW = 3
GPU = "gpu"  # the one concurrency group of every event that makes a service use its GPU

STATE_LABELS = {
    "waiting": "⏳ waiting for its image",
    "generating": "🎨 drawing…",
    "ready": "✅ image ready",
    "filtered": "🚫 filtered",
    "failed": "⚠️ failed",
}


Payload = dict[str, Any] | None
SceneOut = tuple[Payload, Payload]  # (the State that drives the page, the JSON that API clients receive)


def scene_payload(scene: Scene | None) -> Payload:
    return scene.model_dump(mode="json") if scene is not None else None


def scene_out(scene: Scene | None) -> SceneOut:
    payload = scene_payload(scene)
    return payload, payload


async def stream_scene(gen: AsyncIterator[Scene]) -> AsyncIterator[SceneOut]:
    """An operation's scene snapshots as page values; refusals become a friendly Gradio error."""
    try:
        async for scene in gen:
            yield scene_out(scene)
    except board.UserError as e:
        raise gr.Error(str(e)) from None


async def once(coro: Any) -> SceneOut:
    try:
        return scene_out(await coro)
    except board.UserError as e:
        raise gr.Error(str(e)) from None


# --- what a card shows -----------------------------------------------------------------------------------------
def model_status(obj: SceneObject) -> str:
    """One line about the card's 3D model: progress while a job runs, the outcome after."""
    job = obj.job
    if obj.model_state == "queued" and job:
        pos = f" (position {job.queue_position})" if job.queue_position is not None else ""
        return f"🧊 3D queued{pos}"
    if obj.model_state == "running" and job:
        stage = f" — {job.stage}" if job.stage else ""
        return f"🧊 3D running{stage} · {round(job.progress * 100)} %"
    if obj.model_state == "ready" and obj.model:
        backend = f" ({obj.model.backend})" if obj.model.backend else ""
        return f"🧊 3D ready{backend} · seed {obj.model.seed}"
    if obj.model_state in ("failed", "filtered", "cancelled"):
        return f"🧊 3D {obj.model_state}: {md_escape(obj.model_error)}"
    return ""


def card_header(obj: SceneObject) -> str:
    count = f" ×{obj.count}" if obj.count > 1 else ""
    lines = [f"**{md_escape(obj.name)}**{count} · {STATE_LABELS[obj.state]}"]
    if obj.error:
        lines.append(f"<small>{md_escape(obj.error)}</small>")
    if obj.image:
        source = "uploaded" if obj.image.source == "upload" else f"seed {obj.image.seed}"
        lines.append(f"<small>image: {source}</small>")
    status = model_status(obj)
    if status:
        lines.append(f"<small>{status}</small>")
    return "  \n".join(lines)


def slot_props(ctx: StudioContext, scene_id: str, obj: SceneObject | None) -> dict[str, dict[str, Any]]:
    """The update (keyword arguments) each output of one slot should have for this object."""
    if obj is None:
        return {"column": {"visible": False}}
    image = str(ctx.workspace.path(scene_id, obj.image.file)) if obj.image else None
    variants = [str(ctx.workspace.path(scene_id, v.file)) for v in obj.variants]
    busy = obj.model_state in ("queued", "running")
    return {
        "column": {"visible": True, "elem_classes": ["card", f"card-{obj.state}"]},
        "oid": {"value": obj.id},
        "header": {"value": card_header(obj)},
        "image": {"value": image},
        "prompt": {"value": obj.prompt},
        "redraw": {
            "value": "Retry" if obj.state in ("failed", "filtered") else "New image",
            "interactive": obj.state != "generating",
        },
        "gallery": {"value": variants, "visible": bool(variants)},
        "to_3d": {"interactive": obj.image is not None and obj.state == "ready" and not busy},
        "cancel": {"visible": busy},
    }


@dataclass
class Slot:
    column: gr.Column
    oid: gr.Textbox
    header: gr.Markdown
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

    UPDATED = ("column", "oid", "header", "image", "prompt", "redraw", "gallery", "to_3d", "cancel")

    def outputs(self) -> list[Any]:
        return [getattr(self, name) for name in self.UPDATED]


def build_slots(count: int) -> list[Slot]:
    """The card pool, laid out in rows; call inside the page layout. All slots start hidden."""
    slots = []
    for start in range(0, count, CARDS_PER_ROW):
        with gr.Row(equal_height=False):
            for _ in range(start, min(count, start + CARDS_PER_ROW)):
                with gr.Column(min_width=240, visible=False, elem_classes=["card"]) as column:
                    oid = gr.Textbox(visible=False)
                    header = gr.Markdown()
                    image = gr.Image(
                        interactive=False,
                        show_label=False,
                        height=200,
                        type="filepath",
                        buttons=["download", "fullscreen"],
                    )
                    prompt = gr.Textbox(label="Image prompt", lines=2, max_lines=4)
                    with gr.Row():
                        use_prompt = gr.Button("Use prompt", size="sm")
                        redraw = gr.Button("New image", size="sm")
                    with gr.Row():
                        n_variants = gr.Slider(1, board.MAX_VARIANTS, 2, step=1, label="Variants", min_width=100)
                        variants = gr.Button("Draw variants", size="sm")
                    gallery = gr.Gallery(
                        label="Pick a variant", columns=4, height=110, allow_preview=False, visible=False
                    )
                    with gr.Row():
                        upload = gr.UploadButton("Upload image", file_types=["image"], size="sm")
                        to_3d = gr.Button("→ 3D", size="sm", variant="primary", interactive=False)
                        cancel = gr.Button("Cancel 3D", size="sm", variant="stop", visible=False)
                    with gr.Row():
                        show = gr.Button("Preview", size="sm")
                        delete = gr.Button("Delete", size="sm", variant="stop")
                slots.append(
                    Slot(
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
                )
    return slots


def board_updates(
    ctx: StudioContext, data: dict[str, Any] | None, shown: dict[str, Any] | None, n_slots: int
) -> tuple[list[Any], dict[str, Any]]:
    """Updates for every slot output (skipping what is already on screen) and the new on-screen record."""
    scene = Scene.model_validate(data) if data else None
    objects = scene.objects if scene else []
    before = shown or {}
    after: dict[str, Any] = {}
    updates: list[Any] = []
    for i in range(n_slots):
        props = slot_props(ctx, scene.id, objects[i]) if scene and i < len(objects) else slot_props(ctx, "", None)
        for name in Slot.UPDATED:
            key = f"{i}.{name}"
            want = props.get(name)
            if want is None or before.get(key) == want:
                updates.append(gr.skip())
                if key in before:
                    after[key] = before[key]
            else:
                updates.append(gr.update(**want))
                after[key] = want
    return updates, after


# --- card actions ----------------------------------------------------------------------------------------------
def wire_slots(
    ctx: StudioContext,
    slots: list[Slot],
    *,
    scene_id: gr.State,
    scene: list[Any],
    preview: gr.Dropdown,
    params: list[Any],
) -> None:
    """Register every card event once. Each handler gets the object id the slot showed when clicked."""

    # The handlers are real `async def`s: Gradio picks how to run a handler (coroutine, generator) from its
    # definition, so a lambda returning a coroutine would not be awaited.
    async def edit(sid: str, oid: str, text: str) -> SceneOut:
        return await once(board.edit_prompt(ctx, sid, oid, text))

    async def draw(sid: str, oid: str) -> AsyncIterator[SceneOut]:
        async for value in stream_scene(board.draw_images(ctx, sid, [oid])):
            yield value

    async def make_variants(sid: str, oid: str, n: float) -> AsyncIterator[SceneOut]:
        async for value in stream_scene(board.make_variants(ctx, sid, oid, int(n))):
            yield value

    async def pick(sid: str, oid: str, evt: gr.SelectData) -> SceneOut:
        return await once(board.pick_variant(ctx, sid, oid, int(evt.index)))

    async def upload_to(sid: str, oid: str, path: str) -> SceneOut:
        return await once(board.upload_image(ctx, sid, oid, path))

    async def model(sid: str, oid: str, *p: Any) -> AsyncIterator[SceneOut]:
        async for value in stream_scene(jobs.generate_3d(ctx, sid, [oid], jobs.job_params(*p))):
            yield value

    async def cancel_job(sid: str, oid: str) -> None:
        await jobs.cancel_jobs(ctx, sid, oid)
        gr.Info("Cancelling the 3D job…")

    def select(oid: str) -> Any:
        return gr.Dropdown(value=oid)

    async def remove(sid: str, oid: str) -> SceneOut:
        return await once(board.delete_object(ctx, sid, oid))

    gpu = {"concurrency_id": GPU, "concurrency_limit": ctx.settings.ui_gpu_concurrency, "api_visibility": "private"}
    quiet = {"api_visibility": "private"}
    for s in slots:
        ids = [scene_id, s.oid]
        s.use_prompt.click(edit, [*ids, s.prompt], scene, **quiet).success(draw, ids, scene, **gpu)
        s.redraw.click(draw, ids, scene, **gpu)
        s.variants.click(make_variants, [*ids, s.n_variants], scene, **gpu)
        s.gallery.select(pick, ids, scene, **quiet)
        s.upload.upload(upload_to, [*ids, s.upload], scene, **quiet)
        s.to_3d.click(model, [*ids, *params], scene, **gpu)
        s.cancel.click(cancel_job, ids, None, **quiet)
        s.show.click(select, [s.oid], [preview], **quiet)
        s.delete.click(remove, ids, scene, **quiet)
