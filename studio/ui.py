"""The studio page: status header, chat, object board, 3D settings, preview, export and "My scenes".

Reads top to bottom: constants, one layout block, one wiring section; the handlers are plain functions in
`handlers.py` (the page's) and `board_slots.py` (the cards'), bound to the context here. Per-browser state is the
scene id (`gr.State`, mirrored into `gr.BrowserState` so a refresh reopens the scene from disk); the scene itself
always comes from disk and reaches the page through one scene State. Named events (`api_name`) let gradio_client
drive a whole scene: /chat -> /generate_images -> /generate_3d -> /export, plus /scene, /new_scene, /open_scene,
/cancel_3d.
"""

from __future__ import annotations

import hashlib
from typing import Any

import gradio as gr

from studio import board_slots, handlers
from studio.context import StudioContext
from studio.events import GPU, bind

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


def build_ui(ctx: StudioContext) -> gr.Blocks:
    browser_secret = hashlib.sha256(str(ctx.workspace.root).encode()).hexdigest()[:32]
    gpu: dict[str, Any] = {"concurrency_id": GPU, "concurrency_limit": ctx.settings.ui_gpu_concurrency}

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
                slots = board_slots.build_slots(ctx.settings.ui_max_objects)
                with gr.Accordion("Export", open=False):
                    export_btn = gr.Button("Export scene", interactive=False)
                    with gr.Row():
                        export_zip = gr.File(label="Scene ZIP (GLBs, PNGs, scene.json, Blender script)")
                        composed = gr.Model3D(label="Composed scene", height=320)

        # --- wiring --------------------------------------------------------------------------------------------
        scene = [scene_state, scene_json]
        cards = [o for slot in slots for o in slot.outputs()]
        header = [status, send, draw_btn, all3d_btn, export_btn]
        pictures = [preview_image, preview_model, download, shown]
        quiet: dict[str, Any] = {"api_visibility": "private"}
        remember = {"fn": bind(handlers.remember_scene, ctx), "inputs": [scene_id], "outputs": [saved_id, scenes]}
        refresh_status = bind(handlers.refresh_status, ctx)
        demo.load(bind(handlers.restore, ctx), [saved_id], [scene_id, *scene, chatbot, scenes], **quiet).then(
            refresh_status, [scene_state], header, **quiet
        )
        timer.tick(refresh_status, [scene_state], header, queue=False, show_progress="hidden", **quiet)
        gr.on(
            [message.submit, send.click],
            handlers.add_user_message,
            [message, chatbot],
            [message, chatbot],
            queue=False,
            **quiet,
        ).then(
            bind(handlers.respond, ctx), [chatbot, scene_id], [chatbot, *scene, scene_id], api_name="chat", **gpu
        ).then(**remember, **quiet).then(bind(handlers.draw_pending, ctx), [scene_id], scene, **gpu, **quiet)
        draw_btn.click(bind(handlers.generate_images, ctx), [scene_id], scene, api_name="generate_images", **gpu)
        all3d_btn.click(bind(handlers.generate_all_3d, ctx), [scene_id, *params], scene, api_name="generate_3d", **gpu)
        cancel_btn.click(
            bind(handlers.cancel_batch, ctx), [scene_id], None, api_name="cancel_3d", concurrency_limit=None
        )
        export_btn.click(
            bind(handlers.export, ctx), [scene_id], [export_zip, composed], api_name="export", concurrency_limit=None
        )
        start_over.click(bind(handlers.new_scene, ctx), None, [scene_id, *scene, chatbot], api_name="new_scene").then(
            **remember, **quiet
        )
        open_btn.click(
            bind(handlers.open_scene, ctx), [scenes], [scene_id, *scene, chatbot], api_name="open_scene"
        ).then(**remember, **quiet)
        # One listener for all that a new scene on screen changes, so each change validates the scene once; a
        # burst of progress ticks collapses into the latest.
        scene_state.change(
            bind(handlers.show_scene, ctx),
            [scene_state, board_shown, preview, shown],
            [*cards, board_shown, preview, *header, *pictures],
            show_progress="hidden",
            trigger_mode="always_last",
            **quiet,
        )
        board_slots.wire_slots(ctx, slots, scene_id=scene_id, scene=scene, preview=preview, params=params)
        preview.change(bind(handlers.show_preview, ctx), [scene_state, preview, shown], pictures, queue=False, **quiet)
        scene_api.click(bind(handlers.get_scene, ctx), [scene_id], scene, api_name="scene")
    return demo
