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

from studio import board_slots, board_view, handlers
from studio.context import StudioContext
from studio.events import GPU, bind
from studio.planner import Mode

TITLE = "Chat-to-3D studio"
STORAGE_KEY = "chat3d-current-scene"
PREVIEW_HEIGHT = 440
EMPTY_BOARD = (
    '<div class="empty-board"><p class="empty-title">No objects yet</p>'
    "<p>Describe a scene in the chat, for example “a cozy reading corner”. Its objects appear here as cards: "
    "each gets a concept image, then a 3D model.</p></div>"
)
# A card's *Preview* brings the large preview into view (the click's own input passes through unchanged).
SCROLL_TO_PREVIEW = (
    "(oid) => { document.getElementById('preview-panel')?.scrollIntoView({behavior: 'smooth', block: 'start'});"
    " return oid; }"
)
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
        with gr.Row(elem_id="topbar", equal_height=True):
            gr.HTML(f'<div id="brand"><span class="mark"></span><h1>{TITLE}</h1></div>')
            status = gr.HTML('<div id="status-header">Checking the services…</div>')
        draw_blocked = gr.State("")  # why the cards cannot draw images now ("" when they can)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=460,
                    buttons=["copy"],
                    placeholder="Describe a scene, e.g. “a cozy reading corner”.",
                )
                # What a message is for, set by the user (never guessed): plan (or edit) the scene, or ask.
                mode = gr.Radio(
                    [("Plan the scene", Mode.PLAN.value), ("Ask", Mode.ASK.value)],
                    value=Mode.PLAN.value,
                    label="Mode",
                    show_label=False,
                    container=False,
                    elem_id="chat-mode",
                )
                busy = gr.State("")  # why Send is disabled while the last message is answered ("" when it is not)
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
            with gr.Column(scale=5, min_width=520, elem_id="board-column"):
                with gr.Row(elem_id="toolbar", equal_height=True):
                    title = gr.HTML(board_view.scene_title(None), elem_id="board-title")
                    draw_btn = gr.Button("Draw images", size="md", interactive=False)
                    all3d_btn = gr.Button("Generate all 3D", variant="primary", size="md", interactive=False)
                    cancel_btn = gr.Button("Cancel 3D", variant="stop", size="md", interactive=False)
                # The scene on screen lives in a State (its change event fires only on a real change); a hidden
                # JSON mirror carries it to API clients, which do not receive State values.
                scene_state = gr.State(None)
                scene_json = gr.JSON(label="Scene file (scene.json)", visible=False)
                scene_api = gr.Button(visible=False)  # only a handle for the /scene API endpoint
                board_shown = gr.State({})  # what each card slot shows now, so updates send only changes
                gr.HTML(EMPTY_BOARD, elem_id="board-empty")
                slots = board_slots.build_slots(ctx.settings.ui_max_objects)
                with gr.Column(elem_id="preview-panel"):
                    with gr.Row(equal_height=True, elem_id="preview-bar"):
                        gr.HTML('<span class="preview-title">Preview</span>', elem_id="preview-title")
                        preview = gr.Dropdown(
                            label="Object",
                            show_label=False,
                            choices=[],
                            interactive=True,
                            container=False,
                            elem_id="preview-choice",
                        )
                        download = gr.DownloadButton("Download GLB", size="md", interactive=False)
                    with gr.Row(equal_height=True):
                        preview_image = gr.Image(
                            label="Image", type="filepath", interactive=False, height=PREVIEW_HEIGHT, scale=2
                        )
                        preview_model = gr.Model3D(label="3D model", height=PREVIEW_HEIGHT, scale=3)
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
                with gr.Accordion("Export", open=False):
                    export_btn = gr.Button("Export scene", interactive=False)
                    with gr.Row():
                        export_zip = gr.File(label="Scene ZIP (GLBs, PNGs, scene.json, Blender script)")
                        composed = gr.Model3D(label="Composed scene", height=320)

        # --- wiring --------------------------------------------------------------------------------------------
        scene = [scene_state, scene_json]
        cards = [o for slot in slots for o in slot.outputs()]
        header = [status, send, draw_btn, all3d_btn, cancel_btn, export_btn, draw_blocked]
        pictures = [preview_image, preview_model, download, shown]
        quiet: dict[str, Any] = {"api_visibility": "private"}
        remember = {"fn": bind(handlers.remember_scene, ctx), "inputs": [scene_id], "outputs": [saved_id, scenes]}
        refresh_status = bind(handlers.refresh_status, ctx)
        demo.load(bind(handlers.restore, ctx), [saved_id], [scene_id, *scene, chatbot, scenes], **quiet).then(
            refresh_status, [scene_state, busy], header, **quiet
        )
        timer.tick(refresh_status, [scene_state, busy], header, queue=False, show_progress="hidden", **quiet)
        # A message is refused while the last one is answered (Send says why); the turn's end frees Send whether
        # it succeeded or not.
        gr.on(
            [message.submit, send.click],
            handlers.add_user_message,
            [message, chatbot, mode, busy],
            [message, chatbot, busy],
            queue=False,
            **quiet,
        ).success(
            bind(handlers.respond, ctx), [chatbot, scene_id, mode], [chatbot, *scene, scene_id], api_name="chat", **gpu
        ).then(handlers.end_turn, None, [busy], queue=False, **quiet).then(**remember, **quiet).then(
            bind(handlers.draw_pending, ctx), [scene_id], scene, **gpu, **quiet
        )
        busy.change(refresh_status, [scene_state, busy], header, queue=False, show_progress="hidden", **quiet)
        draw_btn.click(bind(handlers.generate_images, ctx), [scene_id], scene, api_name="generate_images", **gpu)
        all3d_btn.click(bind(handlers.generate_all_3d, ctx), [scene_id, *params], scene, api_name="generate_3d", **gpu)
        cancel_btn.click(
            bind(handlers.cancel_batch, ctx), [scene_id], None, api_name="cancel_3d", concurrency_limit=None
        )
        export_btn.click(
            bind(handlers.export, ctx), [scene_id], [export_zip, composed], api_name="export", concurrency_limit=None
        )
        start_over.click(
            bind(handlers.new_scene, ctx), [scene_id, busy], [scene_id, *scene, chatbot], api_name="new_scene"
        ).then(**remember, **quiet)
        open_btn.click(
            bind(handlers.open_scene, ctx), [scenes, busy], [scene_id, *scene, chatbot], api_name="open_scene"
        ).then(**remember, **quiet)
        # One listener for all that a new scene on screen changes, so each change validates the scene once; a
        # burst of progress ticks collapses into the latest.
        scene_state.change(
            bind(handlers.show_scene, ctx),
            [scene_state, board_shown, preview, shown, busy],
            [*cards, board_shown, title, preview, *header, *pictures],
            show_progress="hidden",
            trigger_mode="always_last",
            **quiet,
        )
        # Whether images can be drawn changes the cards' drawing buttons: re-label them when it changes.
        draw_blocked.change(
            bind(handlers.show_board, ctx), [scene_state, board_shown], [*cards, board_shown], queue=False, **quiet
        )
        board_slots.wire_slots(
            ctx, slots, scene_id=scene_id, scene=scene, preview=preview, params=params, scroll_js=SCROLL_TO_PREVIEW
        )
        preview.change(bind(handlers.show_preview, ctx), [scene_state, preview, shown], pictures, queue=False, **quiet)
        scene_api.click(bind(handlers.get_scene, ctx), [scene_id], scene, api_name="scene")
    return demo
