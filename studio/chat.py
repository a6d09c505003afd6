"""One chat turn: decide what the user wants, then either stream a normal answer or plan / update the scene.

`chat_turn` yields `(reply_so_far, scene)` pairs; `scene` is the scene the turn works on (a new one when a new
scene request arrives while the current scene already has objects: start-over never deletes, it moves on).
The plan is applied only after it validated, so a failed plan leaves the scene exactly as it was. Every LLM call
fits its answer into the served context (`studio/budget.py`): old history goes first, and a message too long on its
own gets a plain reply asking to shorten it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from studio.clients import PromptTooLong, ServiceError
from studio.context import StudioContext
from studio.planner import (
    CHAT_SYSTEM,
    INTENT_SCHEMA,
    INTENT_SYSTEM,
    Intent,
    PlanError,
    WirePlan,
    classify_intent,
    describe_plan,
    merge_plan,
    parse_intent,
    parse_plan,
    plan_messages,
    plan_min_tokens,
    plan_schema,
)
from studio.workspace import ChatMessage, Scene

PLANNING_NOTE = "Planning the scene…"


def flatten_content(content: Any) -> str:
    """Gradio 6 gives message content as a list of parts ({"type": "text", "text": ...}); the LLM wants text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, list | tuple):
        return "\n".join(t for t in (flatten_content(p) for p in content) if t)
    return ""


def flatten_history(history: list[Any] | None) -> list[dict[str, str]]:
    """Chatbot messages as plain {"role", "content"} dicts, skipping empty and non-chat entries."""
    out = []
    for m in history or []:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        text = flatten_content(content).strip()
        if role in ("user", "assistant") and text:
            out.append({"role": role, "content": text})
    return out


async def decide_intent(ctx: StudioContext, history: list[dict[str, str]], message: str, has_plan: bool) -> Intent:
    intent = classify_intent(message, has_plan=has_plan)
    if intent is not None:
        return intent
    messages = [
        {"role": "system", "content": INTENT_SYSTEM},
        *history[-4:],
        {"role": "user", "content": f"Current plan exists: {has_plan}. Message: {message}"},
    ]
    raw = await ctx.services.llm.complete_json(messages, INTENT_SCHEMA, "intent", max_tokens=32)
    return parse_intent(raw, has_plan=has_plan)


async def request_plan(
    ctx: StudioContext, history: list[dict[str, str]], message: str, scene: Scene | None
) -> WirePlan:
    """One json_schema call per attempt; a plan that does not validate is asked for again, then reported."""
    max_objects = ctx.settings.ui_max_objects
    messages = plan_messages(
        history,
        message,
        max_objects=max_objects,
        current=scene.objects if scene else None,
        scene_name=scene.name if scene else "",
    )
    error: PlanError | None = None
    for _ in range(ctx.settings.ui_plan_attempts):
        raw = await ctx.services.llm.complete_json(
            messages,
            plan_schema(max_objects),
            "scene_plan",
            max_tokens=ctx.settings.ui_plan_max_tokens,
            min_tokens=plan_min_tokens(),
        )
        try:
            return parse_plan(raw, max_objects)
        except PlanError as e:
            error = e
    assert error is not None
    raise error


async def _target_scene(ctx: StudioContext, scene_id: str | None, intent: Intent) -> Scene:
    ws = ctx.workspace
    if scene_id and ws.exists(scene_id):
        scene = ws.load(scene_id)
        if intent is Intent.SCENE and scene.objects:
            return ws.create()  # a new scene request moves on to a new scene; the old one stays in My scenes
        return scene
    return ws.create()


async def chat_turn(
    ctx: StudioContext, scene_id: str | None, history: list[dict[str, str]]
) -> AsyncIterator[tuple[str, Scene | None]]:
    """`history` ends with the user's new message."""
    message = history[-1]["content"] if history and history[-1]["role"] == "user" else ""
    context = history[:-1][-ctx.settings.ui_history_turns :]
    current = ctx.workspace.load(scene_id) if scene_id and ctx.workspace.exists(scene_id) else None
    if not message:
        yield "Please type a message.", current
        return
    try:
        intent = await decide_intent(ctx, context, message, has_plan=bool(current and current.objects))
        if intent is Intent.CHAT:
            reply = ""
            async for reply in _stream_answer(ctx, context, message):
                yield reply, current
            if current is not None:
                await _remember(ctx, current.id, message, reply)
            return
        yield PLANNING_NOTE, current
        if await ctx.services.trellis.moderate(message):
            yield (
                "I can't make that scene: the safety check flagged the request. Try describing something else.",
                current,
            )
            return
        plan = await request_plan(ctx, context, message, current if intent is Intent.EDIT else None)
    except PlanError as e:
        yield f"{e} Nothing was changed; please try again or rephrase the request.", current
        return
    except PromptTooLong as e:
        yield f"{e.message} Nothing was changed.", current
        return
    except ServiceError as e:
        yield f"{e.message} Nothing was changed; please try again in a moment.", current
        return
    scene = await _target_scene(ctx, scene_id, intent)
    reply = await _apply_plan(ctx, scene.id, plan, message, edited=intent is Intent.EDIT)
    yield reply, ctx.workspace.load(scene.id)


async def _stream_answer(ctx: StudioContext, context: list[dict[str, str]], message: str) -> AsyncIterator[str]:
    messages = [{"role": "system", "content": CHAT_SYSTEM}, *context, {"role": "user", "content": message}]
    text = ""
    async for delta in ctx.services.llm.stream_chat(messages, max_tokens=ctx.settings.ui_chat_max_tokens):
        text += delta
        yield text
    if not text.strip():
        yield "(The model returned an empty answer; please try again.)"


async def _apply_plan(ctx: StudioContext, scene_id: str, plan: WirePlan, message: str, *, edited: bool) -> str:
    async with ctx.workspace.edit(scene_id) as scene:
        scene.objects = merge_plan(scene.objects if edited else [], plan)
        scene.name = plan.scene_name
        scene.request = scene.request if edited and scene.request else message
        reply = describe_plan(scene.name, scene.objects, edited=edited)
        scene.chat += [ChatMessage(role="user", content=message), ChatMessage(role="assistant", content=reply)]
    return reply


async def _remember(ctx: StudioContext, scene_id: str, message: str, reply: str) -> None:
    async with ctx.workspace.edit(scene_id) as scene:
        scene.chat += [ChatMessage(role="user", content=message), ChatMessage(role="assistant", content=reply)]
