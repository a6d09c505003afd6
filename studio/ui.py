"""The studio page: status header, chat, object board, 3D settings, preview, export and "My scenes".

Reads top to bottom: constants, handlers, one layout block, one wiring section. Per-browser state is the scene
id (`gr.State`, mirrored into `gr.BrowserState` so a refresh reopens the scene from disk); the scene itself always
comes from disk. Named events (`api_name`) let gradio_client drive a whole scene:
/chat -> /generate_images -> /generate_3d -> /export, plus /scene, /new_scene, /open_scene, /cancel_3d.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from studio import board, cards, jobs
from studio.cards import GPU, SceneOut, board_updates, scene_out, stream_scene
from studio.chat import chat_turn, flatten_history
from studio.context import StudioContext
from studio.export import export_scene
from studio.status import gates, header_html, part_state
from studio.workspace import Scene

TITLE = "Chat-to-3D studio"
STORAGE_KEY = "chat3d-current-scene"
CSS = """
.card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; }
.card-filtered, .card-failed { border-color: #cf222e; }
#status-header { font-size: 0.95em; padding: 4px 0; }
"""
# Gradio buttons have no tooltip option: a disabled button whose label ends in "(reason)" gets that reason as its
# tooltip, kept current as the status header re-labels buttons.
TOOLTIP_JS = """
() => {
  const tip = () => document.querySelectorAll("button").forEach((b) => {
    const reason = b.disabled ? (b.textContent.trim().match(/\\(([^)]+)\\)$/) || [])[1] : undefined;
    if (reason && b.title !== reason) b.title = reason;
    if (!reason && b.dataset.reasonTip) b.removeAttribute("title");
    if (reason) b.dataset.reasonTip = "1";
  });
  new MutationObserver(tip).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["disabled"]});
  tip();
}
"""
NO_SCENE = "There is no scene yet: describe one in the chat first."
Payload = dict[str, Any] | None


def build_ui(ctx: StudioContext) -> gr.Blocks:
    ws = ctx.workspace
    browser_secret = hashlib.sha256(str(ws.root).encode()).hexdigest()[:32]
    gpu: dict[str, Any] = {"concurrency_id": GPU, "concurrency_limit": ctx.settings.ui_gpu_concurrency}

    # --- handlers ------------------------------------------------------------------------------------------
    def load_scene(sid: str | None) -> Scene | None:
        return ws.load(sid) if sid and ws.exists(sid) else None

    def require(sid: str | None) -> str:
        if not sid or not ws.exists(sid):
            raise gr.Error(NO_SCENE)
        return sid

    def chat_of(scene: Scene | None) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in scene.chat] if scene else []

    def scene_choices() -> Any:
        stamp = "%Y-%m-%d %H:%M"
        return gr.Dropdown(
            choices=[
                (f"{s.name} · {s.objects} objects · {time.strftime(stamp, time.gmtime(s.updated))}", s.id)
                for s in ws.list()
            ]
        )

    def restore(saved: str | None) -> tuple[Any, ...]:
        """Page load: reopen this browser's scene from disk, if it still exists."""
        try:
            scene = ws.reopen(saved) if saved and ws.exists(saved) else None
        except (ValueError, OSError):  # a damaged or newer scene file: start clean, leave the file alone
            scene = None
        sid = scene.id if scene else None
        return sid, *scene_out(scene), chat_of(scene), scene_choices()

    def add_user_message(message: str, history: list[Any]) -> tuple[str, list[Any]]:
        text = (message or "").strip()
        return "", [*history, {"role": "user", "content": text}] if text else history

    async def respond(history: list[Any], sid: str | None) -> AsyncIterator[tuple[Any, ...]]:
        """Stream the assistant's answer; a scene request also yields the new or updated plan."""
        plain = flatten_history(history)
        if not plain or plain[-1]["role"] != "user":
            yield history, *scene_out(load_scene(sid)), sid
            return
        async for reply, scene in chat_turn(ctx, sid, plain):
            sid = scene.id if scene else sid
            yield [*history, {"role": "assistant", "content": reply}], *scene_out(scene), sid

    async def draw_pending(sid: str | None) -> AsyncIterator[SceneOut]:
        """Draw every card still waiting for its image; cards fill in one by one."""
        if not sid or not ws.exists(sid):
            return
        async for value in stream_scene(board.draw_images(ctx, sid)):
            yield value

    async def generate_images(sid: str | None) -> AsyncIterator[SceneOut]:
        async for value in draw_pending(require(sid)):
            yield value

    async def generate_all_3d(
        sid: str | None,
        seed: float,
        ss_steps: float,
        slat_steps: float,
        ss_cfg: float,
        slat_cfg: float,
        no_texture: bool,
    ) -> AsyncIterator[SceneOut]:
        """Every card with an image and no model yet; named parameters so API clients can pass them by name."""
        sid = require(sid)
        yield scene_out(ws.load(sid))
        # Where the 3D service cannot bake textures (the header says why), ask for what it can make.
        textured, _ = part_state((await ctx.health()).trellis, "texture")
        no_texture = no_texture or not textured
        params = jobs.job_params(int(seed or 0), int(ss_steps), int(slat_steps), ss_cfg, slat_cfg, no_texture)
        async for value in stream_scene(jobs.generate_3d(ctx, sid, None, params)):
            yield value

    async def cancel_batch(sid: str | None) -> None:
        await jobs.cancel_jobs(ctx, require(sid))
        gr.Info("Cancelling the 3D jobs of this scene…")

    async def export(sid: str | None) -> tuple[str, str]:
        scene = ws.load(require(sid))
        zip_path, glb_path = await asyncio.to_thread(export_scene, scene, ws)
        return str(zip_path), str(glb_path)

    def get_scene(sid: str | None) -> SceneOut:
        return scene_out(load_scene(sid))

    def remember_scene(sid: str | None) -> tuple[Any, ...]:
        """Keep this browser's scene id (a refresh reopens it) and show the scene in My scenes."""
        return sid, scene_choices()

    def new_scene() -> tuple[Any, ...]:
        scene = ws.create()  # the previous scene stays on disk and in My scenes
        return scene.id, *scene_out(scene), []

    def open_scene(scene_id: str | None) -> tuple[Any, ...]:
        if not scene_id or not ws.exists(scene_id):
            raise gr.Error("Pick a saved scene first.")
        try:
            scene = ws.reopen(scene_id)
        except (ValueError, OSError) as e:
            raise gr.Error(f"That scene cannot be opened: {e}") from None
        return scene.id, *scene_out(scene), chat_of(scene)

    async def refresh_status(data: Payload) -> tuple[Any, ...]:
        h = await ctx.health()
        g = gates(h, Scene.model_validate(data) if data else None)
        buttons = [gr.Button(value=label, interactive=ok) for ok, label in (g.send, g.draw, g.all3d, g.export)]
        return header_html(h), *buttons

    def sync_board(data: Payload, shown: dict[str, Any] | None) -> list[Any]:
        updates, now = board_updates(ctx, data, shown, ctx.settings.ui_max_objects)
        return [*updates, now]

    def preview_choices(data: Payload, selected: str | None) -> Any:
        scene = Scene.model_validate(data) if data else None
        choices = [(o.name, o.id) for o in scene.objects] if scene else []
        keep = selected if any(v == selected for _, v in choices) else None
        return gr.Dropdown(choices=choices, value=keep)

    def show_preview(sid: str | None, oid: str | None, shown: Any) -> tuple[Any, ...]:
        """The chosen object's image and model; untouched when nothing changed (no 3D viewer reload)."""
        scene = load_scene(sid)
        obj = scene.find(oid) if scene and oid else None
        image = str(ws.path(scene.id, obj.image.file)) if scene and obj and obj.image else None
        glb = str(ws.path(scene.id, obj.model.file)) if scene and obj and obj.model else None
        if [image, glb] == shown:
            return gr.skip(), gr.skip(), gr.skip(), shown
        download = gr.DownloadButton(value=glb, interactive=glb is not None)
        return image, glb, download, [image, glb]

    # --- layout --------------------------------------------------------------------------------------------
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        scene_id = gr.State(None)
        # A stable key and secret, so a refresh after the app restarted (supervisord) still finds the scene; the
        # value is only a scene id, so the secret protects nothing and need not be kept secret.
        saved_id = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=browser_secret)
        shown = gr.State([None, None])
        timer = gr.Timer(ctx.settings.ui_status_interval_s)
        gr.Markdown(f"## {TITLE}")
        status = gr.HTML('<div id="status-header">Checking the services…</div>')
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=460,
                    buttons=["copy"],
                    placeholder="Describe a scene, e.g. “a cozy reading corner”.",
                )
                message = gr.Textbox(
                    show_label=False,
                    placeholder="Describe a scene or ask a question…",
                    submit_btn=False,
                    lines=1,
                    max_lines=4,
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", interactive=False)
                    start_over = gr.Button("Start over (new scene)")
                with gr.Accordion("My scenes", open=False):
                    scenes = gr.Dropdown(label="Saved scenes", choices=[], interactive=True, allow_custom_value=True)
                    open_btn = gr.Button("Open scene")
            with gr.Column(scale=3, min_width=480):
                with gr.Row():
                    draw_btn = gr.Button("Draw images", interactive=False)
                    all3d_btn = gr.Button("Generate all 3D", variant="primary", interactive=False)
                    cancel_btn = gr.Button("Cancel 3D", variant="stop")
                with gr.Accordion("3D settings", open=False):
                    with gr.Row():
                        seed = gr.Number(0, label="Seed (0 = random)", precision=0, minimum=0)
                        no_texture = gr.Checkbox(False, label="No texture (faster)")
                    with gr.Row():
                        ss_steps = gr.Slider(10, 50, 12, step=1, label="Structure steps")
                        slat_steps = gr.Slider(10, 50, 12, step=1, label="Detail steps")
                    with gr.Row():
                        ss_cfg = gr.Slider(0, 10, 7.5, step=0.5, label="Structure guidance (CFG)")
                        slat_cfg = gr.Slider(0, 10, 3.0, step=0.5, label="Detail guidance (CFG)")
                params = [seed, ss_steps, slat_steps, ss_cfg, slat_cfg, no_texture]
                # The scene on screen lives in a State (its change event fires only on a real change); a hidden
                # JSON mirror carries it to API clients, which do not receive State values.
                scene_state = gr.State(None)
                scene_json = gr.JSON(label="Scene file (scene.json)", visible=False)
                scene_api = gr.Button(visible=False)  # only a handle for the /scene API endpoint
                with gr.Accordion("Preview", open=True):
                    preview = gr.Dropdown(label="Object", choices=[], interactive=True)
                    with gr.Row():
                        preview_image = gr.Image(label="2D", type="filepath", interactive=False, height=300)
                        preview_model = gr.Model3D(label="3D", height=300)
                    download = gr.DownloadButton("Download GLB", interactive=False)
                board_shown = gr.State({})  # what each card slot shows now, so updates send only changes
                slots = cards.build_slots(ctx.settings.ui_max_objects)
                with gr.Accordion("Export", open=False):
                    export_btn = gr.Button("Export scene", interactive=False)
                    with gr.Row():
                        export_zip = gr.File(label="Scene ZIP (GLBs, PNGs, scene.json, Blender script)")
                        composed = gr.Model3D(label="Composed scene", height=320)

        # --- wiring --------------------------------------------------------------------------------------------
        remember = {
            "fn": remember_scene,
            "inputs": [scene_id],
            "outputs": [saved_id, scenes],
            "api_visibility": "private",
        }
        scene = [scene_state, scene_json]
        status_io = {"inputs": [scene_state], "outputs": [status, send, draw_btn, all3d_btn, export_btn]}
        demo.load(restore, [saved_id], [scene_id, *scene, chatbot, scenes], api_visibility="private").then(
            refresh_status, **status_io, api_visibility="private"
        )
        timer.tick(refresh_status, **status_io, queue=False, api_visibility="private", show_progress="hidden")
        gr.on(
            [message.submit, send.click],
            add_user_message,
            [message, chatbot],
            [message, chatbot],
            queue=False,
            api_visibility="private",
        ).then(respond, [chatbot, scene_id], [chatbot, *scene, scene_id], api_name="chat", **gpu).then(**remember).then(
            draw_pending, [scene_id], scene, api_visibility="private", **gpu
        )
        draw_btn.click(generate_images, [scene_id], scene, api_name="generate_images", **gpu)
        all3d_btn.click(generate_all_3d, [scene_id, *params], scene, api_name="generate_3d", **gpu)
        cancel_btn.click(cancel_batch, [scene_id], None, api_name="cancel_3d", concurrency_limit=None)
        export_btn.click(export, [scene_id], [export_zip, composed], api_name="export", concurrency_limit=None)
        start_over.click(new_scene, None, [scene_id, *scene, chatbot], api_name="new_scene").then(**remember)
        open_btn.click(open_scene, [scenes], [scene_id, *scene, chatbot], api_name="open_scene").then(**remember)
        board_outputs = [o for slot in slots for o in slot.outputs()]
        scene_state.change(
            sync_board,
            [scene_state, board_shown],
            [*board_outputs, board_shown],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )
        cards.wire_slots(ctx, slots, scene_id=scene_id, scene=scene, preview=preview, params=params)
        scene_state.change(preview_choices, [scene_state, preview], [preview], queue=False, api_visibility="private")
        scene_state.change(refresh_status, **status_io, queue=False, api_visibility="private", show_progress="hidden")
        scene_state.change(
            show_preview,
            [scene_id, preview, shown],
            [preview_image, preview_model, download, shown],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        )
        preview.change(
            show_preview,
            [scene_id, preview, shown],
            [preview_image, preview_model, download, shown],
            queue=False,
            api_visibility="private",
        )
        scene_api.click(get_scene, [scene_id], scene, api_name="scene")
    return demo
