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
from studio.board_view import preview_choices, preview_files
from studio.chat import chat_turn, flatten_history
from studio.context import HealthSnapshot, StudioContext
from studio.events import Payload, SceneOut, scene_of, scene_out, stream_3d, stream_scene
from studio.export import export_scene
from studio.status import gates, header_html
from studio.workspace import Scene, Workspace

NO_SCENE = "There is no scene yet: describe one in the chat first."
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
        (f"{s.name} · {s.objects} objects · {time.strftime(STAMP, time.gmtime(s.updated))}", s.id) for s in ws.list()
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


def add_user_message(message: str, history: list[Any]) -> tuple[str, list[Any]]:
    text = (message or "").strip()
    return "", [*history, {"role": "user", "content": text}] if text else history


async def respond(ctx: StudioContext, history: list[Any], sid: str | None) -> AsyncIterator[tuple[Any, ...]]:
    """Stream the assistant's answer; a scene request also yields the new or updated plan."""
    plain = flatten_history(history)
    if not plain or plain[-1]["role"] != "user":
        yield history, *scene_out(load_scene(ctx.workspace, sid)), sid
        return
    async for reply, scene in chat_turn(ctx, sid, plain):
        sid = scene.id if scene else sid
        yield [*history, {"role": "assistant", "content": reply}], *scene_out(scene), sid


def remember_scene(ctx: StudioContext, sid: str | None) -> tuple[Any, ...]:
    """Keep this browser's scene id (a refresh reopens it) and show the scene in My scenes."""
    return sid, scene_choices(ctx.workspace)


def new_scene(ctx: StudioContext) -> tuple[Any, ...]:
    scene = ctx.workspace.create()  # the previous scene stays on disk and in My scenes
    return scene.id, *scene_out(scene), []


def open_scene(ctx: StudioContext, scene_id: str | None) -> tuple[Any, ...]:
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
    """Draw every card still waiting for its image; cards fill in one by one."""
    if not sid or not ctx.workspace.exists(sid):
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
    """Every card with an image and no model yet; named parameters so API clients can pass them by name."""
    sid = require(ctx.workspace, sid)
    async for value in stream_3d(ctx, sid, None, seed, ss_steps, slat_steps, ss_cfg, slat_cfg, no_texture):
        yield value


async def cancel_batch(ctx: StudioContext, sid: str | None) -> None:
    await jobs.cancel_jobs(ctx, require(ctx.workspace, sid))
    gr.Info("Cancelling the 3D jobs of this scene…")


async def export(ctx: StudioContext, sid: str | None) -> tuple[str, str]:
    scene = ctx.workspace.load(require(ctx.workspace, sid))
    zip_path, glb_path = await asyncio.to_thread(export_scene, scene, ctx.workspace)
    return str(zip_path), str(glb_path)


# --- what the page shows ----------------------------------------------------------------------------------------
def status_outputs(h: HealthSnapshot, scene: Scene | None) -> list[Any]:
    """The status header and the page-level buttons, each enabled or labelled with why not."""
    g = gates(h, scene)
    buttons = [gr.Button(value=label, interactive=ok) for ok, label in (g.send, g.draw, g.all3d, g.export)]
    return [header_html(h), *buttons]


def preview_outputs(ws: Workspace, scene: Scene | None, object_id: str | None, shown: Any) -> list[Any]:
    """The chosen object's image, model and download; untouched when nothing changed (no 3D viewer reload)."""
    files = preview_files(ws, scene, object_id)
    if files == shown:
        return [gr.skip(), gr.skip(), gr.skip(), shown]
    image, glb = files
    return [image, glb, gr.DownloadButton(value=glb, interactive=glb is not None), files]


async def refresh_status(ctx: StudioContext, data: Payload) -> list[Any]:
    return status_outputs(await ctx.health(), scene_of(data))


async def show_scene(
    ctx: StudioContext, data: Payload, board_shown: dict[str, Any] | None, selected: str | None, shown: Any
) -> list[Any]:
    """Everything a new scene on screen updates, from one validation of it: the cards (only what changed), the
    preview's choices and pictures, and the header and buttons."""
    scene = scene_of(data)
    cards, now = board_updates(ctx.workspace, scene, board_shown, ctx.settings.ui_max_objects)
    choices, keep = preview_choices(scene, selected)
    # The last health poll is enough here (the timer keeps it fresh): a slow health check never holds up the cards.
    health = ctx.last_health or await ctx.health()
    preview = preview_outputs(ctx.workspace, scene, keep, shown)
    return [*cards, now, gr.Dropdown(choices=choices, value=keep), *status_outputs(health, scene), *preview]


def show_preview(ctx: StudioContext, data: Payload, object_id: str | None, shown: Any) -> list[Any]:
    return preview_outputs(ctx.workspace, scene_of(data), object_id, shown)
