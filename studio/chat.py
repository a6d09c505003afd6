"""One chat turn: decide what the user wants, then either stream a normal answer or plan / update the scene.

`chat_turn` yields `(reply_so_far, scene)` pairs; `scene` is the scene the turn works on (a new one when a new
scene request arrives while the current scene already has objects: start-over never deletes, it moves on).
A turn reads the scene once and yields what it read or saved; only a change reads it again, under the scene's lock.
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
from studio.workspace import ChatRecord, Scene, new_id

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
    yield await _save_plan(ctx, current, intent, plan, message)


async def _stream_answer(ctx: StudioContext, context: list[dict[str, str]], message: str) -> AsyncIterator[str]:
    messages = [{"role": "system", "content": CHAT_SYSTEM}, *context, {"role": "user", "content": message}]
    text = ""
    async for delta in ctx.services.llm.stream_chat(messages, max_tokens=ctx.settings.ui_chat_max_tokens):
        text += delta
        yield text
    if not text.strip():
        yield "(The model returned an empty answer; please try again.)"


async def _save_plan(
    ctx: StudioContext, current: Scene | None, intent: Intent, plan: WirePlan, message: str
) -> tuple[str, Scene]:
    """Apply the plan and save it; returns the reply and the saved scene. An edit (or any plan for an empty scene)
    changes the current scene, re-read under its lock because cards may have changed while the LLM planned; a new
    scene request on a scene with objects starts a new scene, and the old one stays in My scenes."""
    edited = intent is Intent.EDIT
    if current is not None and (edited or not current.objects):
        async with ctx.workspace.edit(current.id) as scene:
            reply = _apply_plan(scene, plan, message, edited=edited)
        return reply, scene
    scene = Scene(id=new_id())
    reply = _apply_plan(scene, plan, message, edited=False)
    ctx.workspace.save(scene)
    return reply, scene


def _apply_plan(scene: Scene, plan: WirePlan, message: str, *, edited: bool) -> str:
    scene.objects = merge_plan(scene.objects if edited else [], plan)
    scene.name = plan.scene_name
    scene.request = scene.request if edited and scene.request else message
    reply = describe_plan(scene.name, scene.objects, edited=edited)
    scene.chat += _exchange(message, reply)
    return reply


async def _remember(ctx: StudioContext, scene_id: str, message: str, reply: str) -> None:
    async with ctx.workspace.edit(scene_id) as scene:
        scene.chat += _exchange(message, reply)


def _exchange(message: str, reply: str) -> list[ChatRecord]:
    return [ChatRecord(role="user", content=message), ChatRecord(role="assistant", content=reply)]
