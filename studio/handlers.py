"""The page's event handlers, as plain functions of the studio context and the event's inputs; `ui.py` binds them
to the context (`events.bind`) and wires them. The cards' own handlers are in `board_slots.py`.

Each event reads its scene once and passes the `Scene` along: from disk when it starts from the scene id, else
from the scene State the page holds (validated once by `events.scene_of`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from studio import board, jobs
from studio.board_slots import board_updates
from studio.board_view import preview_choices, preview_files, scene_title
from studio.chat import chat_turn, flatten_history
from studio.context import HealthSnapshot, StudioContext
from studio.events import Payload, SceneOut, scene_of, scene_out, stream_3d, stream_scene
from studio.export import export_scene
from studio.planner import Mode
from studio.status import all3d_block, draw_block, gates, header_html, running_3d
from studio.words import plural
from studio.workspace import Scene, Workspace

NO_SCENE = "There is no scene yet: describe one in the chat first."
PLANNING, ANSWERING = "planning…", "answering…"  # why Send is disabled while a message is answered
STAMP = "%Y-%m-%d %H:%M"


def load_scene(ws: Workspace, sid: str | None) -> Scene | None:
    return ws.load(sid) if sid and ws.exists(sid) else None


def require(ws: Workspace, sid: str | None) -> str:
    if not sid or not ws.exists(sid):
        raise gr.Error(NO_SCENE)
    return sid


def chat_of(scene: Scene | None) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in scene.chat] if scene else []


def scene_choices(ws: Workspace) -> Any:
    """My scenes, newest first."""
    labels = [
        (f"{s.name} · {plural(s.objects, 'object')} · {time.strftime(STAMP, time.gmtime(s.updated))}", s.id)
        for s in ws.list()
    ]
    return gr.Dropdown(choices=labels)


# --- page load, chat and My scenes ------------------------------------------------------------------------------
def restore(ctx: StudioContext, saved: str | None) -> tuple[Any, ...]:
    """Page load: reopen this browser's scene from disk, if it still exists."""
    ws = ctx.workspace
    try:
        scene = ws.reopen(saved) if saved and ws.exists(saved) else None
    except (ValueError, OSError):  # a damaged or newer scene file: start clean, leave the file alone
        scene = None
    sid = scene.id if scene else None
    return sid, *scene_out(scene), chat_of(scene), scene_choices(ws)


def add_user_message(message: str, history: list[Any], mode: str, busy: str) -> tuple[str, list[Any], str]:
    """Echo the user's message at once and say what now runs; refused (the text stays in the box) while the last
    message is still being answered."""
    refuse_while_busy(busy)
    text = (message or "").strip()
    if not text:
        return "", history, ""
    return "", [*history, {"role": "user", "content": text}], PLANNING if mode != Mode.ASK else ANSWERING


def end_turn() -> str:
    """The turn is over (answered, failed or cancelled): Send is free again."""
    return ""


async def respond(
    ctx: StudioContext, history: list[Any], sid: str | None, mode: str = Mode.PLAN
) -> AsyncIterator[tuple[Any, ...]]:
    """Stream the assistant's answer; in plan mode also the streamed cards and, once saved, the new or updated
    scene. The scene id changes only to a saved scene."""
    plain = flatten_history(history)
    if not plain or plain[-1]["role"] != "user":
        yield history, *scene_out(load_scene(ctx.workspace, sid)), sid
        return
    async for step in chat_turn(ctx, sid, plain, mode):
        if step.scene is not None and not step.provisional:
            sid = step.scene.id
        yield [*history, {"role": "assistant", "content": step.reply}], *scene_out(step.scene), sid


def refuse_while_busy(busy: str) -> None:
    """A chat, start-over or open event while the last message is still being answered is refused, saying why."""
    if busy:
        raise gr.Error(f"Please wait: the studio is still {busy.rstrip('…')} your last message.", duration=5)


def remember_scene(ctx: StudioContext, sid: str | None) -> tuple[Any, ...]:
    """Keep this browser's scene id (a refresh reopens it) and show the scene in My scenes."""
    return sid, scene_choices(ctx.workspace)


def new_scene(ctx: StudioContext, sid: str | None, busy: str = "") -> tuple[Any, ...]:
    """A fresh scene; the previous one stays on disk and in My scenes. A scene still empty is reused, so starting
    over twice leaves no empty scenes behind."""
    refuse_while_busy(busy)
    current = load_scene(ctx.workspace, sid)
    scene = current if current is not None and current.empty else ctx.workspace.create()
    return scene.id, *scene_out(scene), []


def open_scene(ctx: StudioContext, scene_id: str | None, busy: str = "") -> tuple[Any, ...]:
    refuse_while_busy(busy)
    ws = ctx.workspace
    if not scene_id or not ws.exists(scene_id):
        raise gr.Error("Pick a saved scene first.")
    try:
        scene = ws.reopen(scene_id)
    except (ValueError, OSError) as e:
        raise gr.Error(f"That scene cannot be opened: {e}") from None
    return scene.id, *scene_out(scene), chat_of(scene)


def get_scene(ctx: StudioContext, sid: str | None) -> SceneOut:
    return scene_out(load_scene(ctx.workspace, sid))


# --- images, 3D and export --------------------------------------------------------------------------------------
async def draw_pending(ctx: StudioContext, sid: str | None) -> AsyncIterator[SceneOut]:
    """Draw every card still waiting for its image; cards fill in one by one. Nothing happens while images cannot
    be drawn (text-to-image off, 3D service not up): the cards say they wait for an upload or for the service."""
    if not sid or not ctx.workspace.exists(sid) or await board.draw_refusal_now(ctx):
        return
    async for value in stream_scene(board.draw_images(ctx, sid)):
        yield value


async def generate_images(ctx: StudioContext, sid: str | None) -> AsyncIterator[SceneOut]:
    async for value in draw_pending(ctx, require(ctx.workspace, sid)):
        yield value


async def generate_all_3d(
    ctx: StudioContext,
    sid: str | None,
    seed: float,
    ss_steps: float,
    slat_steps: float,
    ss_cfg: float,
    slat_cfg: float,
    no_texture: bool,
) -> AsyncIterator[SceneOut]:
    """Every card with an image and no model yet; named parameters so API clients can pass them by name. A click
    with nothing to do (the button was enabled a moment ago) is answered with why."""
    sid = require(ctx.workspace, sid)
    first = True
    async for value in stream_3d(ctx, sid, None, seed, ss_steps, slat_steps, ss_cfg, slat_cfg, no_texture):
        if first:  # the scene as the batch found it
            first = False
            idle = all3d_block((await ctx.health()).trellis, scene_of(value[0]))
            if idle:
                gr.Warning(f"Nothing to send to 3D: {idle}.")
        yield value


async def cancel_batch(ctx: StudioContext, sid: str | None) -> None:
    sid = require(ctx.workspace, sid)
    if not running_3d(ctx.workspace.load(sid)):
        gr.Info("No 3D job is running in this scene.")
        return
    await jobs.cancel_jobs(ctx, sid)
    gr.Info("Cancelling the 3D jobs of this scene…")


async def export(ctx: StudioContext, sid: str | None) -> tuple[str, str]:
    scene = ctx.workspace.load(require(ctx.workspace, sid))
    ctx.served.allow(ctx.workspace.scene_dir(scene.id))
    zip_path, glb_path = await asyncio.to_thread(export_scene, scene, ctx.workspace)
    return str(zip_path), str(glb_path)


# --- what the page shows ----------------------------------------------------------------------------------------
def status_outputs(h: HealthSnapshot, scene: Scene | None, busy: str = "") -> list[Any]:
    """The status header, the page-level buttons (each enabled, or labelled with why not; Send also while the last
    message is being answered), and what the cards' drawing buttons need to know (a change re-labels them)."""
    g = gates(h, scene)
    send = (False, f"Send ({busy})") if busy else g.send
    gated = (send, g.draw, g.all3d, g.cancel, g.export)
    buttons = [gr.Button(value=label, interactive=ok) for ok, label in gated]
    return [header_html(h), *buttons, draw_block(h.trellis)]


def preview_outputs(ws: Workspace, scene: Scene | None, object_id: str | None, shown: Any) -> list[Any]:
    """The chosen object's image, model and download; untouched when nothing changed (no 3D viewer reload)."""
    files = preview_files(ws, scene, object_id)
    if files == shown:
        return [gr.skip(), gr.skip(), gr.skip(), shown]
    image, glb = files
    return [image, glb, gr.DownloadButton(value=glb, interactive=glb is not None), files]


async def refresh_status(ctx: StudioContext, data: Payload, busy: str = "") -> list[Any]:
    return status_outputs(await ctx.health(), scene_of(data), busy)


async def show_scene(
    ctx: StudioContext,
    data: Payload,
    board_shown: dict[str, Any] | None,
    selected: str | None,
    shown: Any,
    busy: str = "",
) -> list[Any]:
    """Everything a new scene on screen updates, from one validation of it: the cards (only what changed), the
    board's title, the preview's choices and pictures, and the header and buttons."""
    scene = scene_of(data)
    if scene is not None:  # the cards and the preview show its files: Gradio may copy them from its folder
        ctx.served.allow(ctx.workspace.scene_dir(scene.id))
    # The last health poll is enough here (the timer keeps it fresh): a slow health check never holds up the cards.
    health = ctx.last_health or await ctx.health()
    cards, now = board_updates(
        ctx.workspace, scene, board_shown, ctx.settings.ui_max_objects, draw_block(health.trellis)
    )
    choices, keep = preview_choices(scene, selected)
    preview = preview_outputs(ctx.workspace, scene, keep, shown)
    title = scene_title(scene)
    return [
        *cards,
        now,
        title,
        gr.Dropdown(choices=choices, value=keep),
        *status_outputs(health, scene, busy),
        *preview,
    ]


async def show_board(ctx: StudioContext, data: Payload, board_shown: dict[str, Any] | None) -> list[Any]:
    """The cards again, when what they depend on besides the scene changed (whether images can be drawn)."""
    health = ctx.last_health or await ctx.health()
    cards, now = board_updates(
        ctx.workspace, scene_of(data), board_shown, ctx.settings.ui_max_objects, draw_block(health.trellis)
    )
    return [*cards, now]


def show_preview(ctx: StudioContext, data: Payload, object_id: str | None, shown: Any) -> list[Any]:
    return preview_outputs(ctx.workspace, scene_of(data), object_id, shown)
