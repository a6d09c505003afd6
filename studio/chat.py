"""One chat turn, in the mode the user chose: *Ask* streams a normal answer; *Plan the scene* plans a new scene when
the scene on screen has no objects, and edits its plan otherwise. Nothing guesses the mode.

`chat_turn` yields `TurnStep`s: the reply so far, the scene to show and whether that scene is provisional (streamed
cards not saved yet). A plan streams: each object becomes a card as soon as its name and prompt are complete, and
the reply shows the time spent ("Planning… 7 s"). The plan is saved once it validated, so a plan that fails (an
invalid answer, a timeout, a service error, a disk that cannot save it) leaves the scene exactly as it was and the
board shows it again; an edit that changes nothing says so and saves nothing. Every LLM call fits its answer into
the served context (`studio/budget.py`): the oldest context goes first, and a message too long on its own gets a
plain reply asking to shorten it.

The planner sees only the user's own words: their earlier plan requests for this scene (scene.json records them
by mode) and the current plan; never the chat's error messages, small talk or plan summaries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, TypeVar

from studio.clients import PromptTooLong, ServiceError
from studio.context import StudioContext
from studio.planner import (
    CHAT_SYSTEM,
    Mode,
    PlanError,
    PlanStream,
    WireEdit,
    WirePlan,
    apply_edit,
    asks_for_copies,
    describe_plan,
    edit_schema,
    nothing_changed,
    plan_changes,
    plan_messages,
    plan_min_tokens,
    plan_schema,
)
from studio.workspace import ChatRecord, Scene, StorageError, new_id

TICK_S = 1.0  # how often the elapsed time in "Planning… 7 s" moves on while the LLM is silent
T = TypeVar("T")


class TurnStep(NamedTuple):
    reply: str
    scene: Scene | None
    provisional: bool = False  # the scene holds streamed cards that are not saved (yet)


class NothingChanged(Exception):
    """An edit that left every object as it was: nothing is saved."""


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


def planning_note(seconds: float, cards: int, *, editing: bool) -> str:
    what = "Editing the plan" if editing else "Planning"
    so_far = (
        f" · {cards} object{'s' if cards != 1 else ''} so far (not saved until the plan is complete)" if cards else ""
    )
    return f"{what}… {int(seconds)} s{so_far}"


async def with_ticks(source: AsyncIterator[T], every: float) -> AsyncIterator[T | None]:
    """`source`'s items, and None whenever `every` seconds pass without one. `source` runs in a task of its own
    (so an HTTP stream stays in one task); closing this cancels that task, which closes the stream."""
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()  # (done, item or the error that ended the source)

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait((False, item))
        except Exception as e:
            queue.put_nowait((True, e))
        else:
            queue.put_nowait((True, None))

    task = asyncio.create_task(pump())
    getter: asyncio.Future[tuple[bool, Any]] | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=every)
            if not done:
                yield None
                continue
            (finished, item), getter = getter.result(), None
            if finished:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        for pending in (getter, task):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending


async def chat_turn(
    ctx: StudioContext, scene_id: str | None, history: list[dict[str, str]], mode: str = Mode.PLAN
) -> AsyncIterator[TurnStep]:
    """`history` ends with the user's new message."""
    message = history[-1]["content"] if history and history[-1]["role"] == "user" else ""
    current = ctx.workspace.load(scene_id) if scene_id and ctx.workspace.exists(scene_id) else None
    if not message:
        yield TurnStep("Please type a message.", current)
        return
    if mode == Mode.ASK:
        turn = ask_turn(ctx, current, history[:-1][-ctx.settings.ui_history_turns :], message)
    else:
        turn = plan_turn(ctx, current, message)
    try:
        async for step in turn:
            yield step
    except StorageError as e:  # saves are atomic: the scene on disk is as it was
        yield TurnStep(f"{e.message} Nothing was changed.", current)


# --- Ask --------------------------------------------------------------------------------------------------------
async def ask_turn(
    ctx: StudioContext, current: Scene | None, context: list[dict[str, str]], message: str
) -> AsyncIterator[TurnStep]:
    system = CHAT_SYSTEM
    if current and current.objects:
        system += f" The current scene, {current.name}, has: " + ", ".join(o.name for o in current.objects) + "."
    messages = [{"role": "system", "content": system}, *context, {"role": "user", "content": message}]
    reply = ""
    try:
        async for delta in ctx.services.llm.stream_chat(messages, max_tokens=ctx.settings.ui_chat_max_tokens):
            reply += delta
            yield TurnStep(reply, current)
    except ServiceError as e:
        yield TurnStep(f"{e.message} Please try again in a moment.", current)
        return
    if not reply.strip():
        yield TurnStep("(The model returned an empty answer; please try again.)", current)
        return
    if current is not None:
        async with ctx.workspace.edit(current.id) as scene:
            scene.chat += exchange(message, reply, "chat")


# --- Plan the scene ---------------------------------------------------------------------------------------------
async def plan_turn(ctx: StudioContext, current: Scene | None, message: str) -> AsyncIterator[TurnStep]:
    """A new plan for a scene without objects (a new scene when there is none), else an edit of its plan."""
    editing = bool(current and current.objects)
    yield TurnStep(planning_note(0, 0, editing=editing), current)
    try:
        if await ctx.services.trellis.moderate(message):
            yield TurnStep(
                "I can't plan that: the safety check flagged the request. Try describing something else.", current
            )
            return
        base = current or Scene(id=new_id())
        new_ids: list[str] = []
        plan: WirePlan | WireEdit | None = None
        async for item in stream_plan(ctx, base, message, new_ids, editing=editing):
            if isinstance(item, TurnStep):
                yield item
            else:
                plan = item
    except PlanError as e:
        yield TurnStep(f"{e} Nothing was changed; please try again or rephrase the request.", current)
        return
    except PromptTooLong as e:
        yield TurnStep(f"{e.message} Nothing was changed.", current)
        return
    except ServiceError as e:
        yield TurnStep(f"{e.message} Nothing was changed; please try again in a moment.", current)
        return
    assert plan is not None
    yield await save_plan(ctx, current, base, plan, message, new_ids)


def planning_context(ctx: StudioContext, scene: Scene, message: str, *, editing: bool) -> list[dict[str, str]]:
    """The planner's messages: for an edit, the user's earlier plan requests for this scene and its plan."""
    if not editing:
        return plan_messages(message, max_objects=ctx.settings.ui_max_objects)
    earlier = [r.content for r in scene.chat if r.role == "user" and r.kind == "plan"]
    if not earlier and scene.request:
        earlier = [scene.request]  # a scene saved before chat records had kinds
    earlier = earlier[-ctx.settings.ui_history_turns :]
    return plan_messages(message, max_objects=ctx.settings.ui_max_objects, current=scene.objects, earlier=earlier)


async def stream_plan(
    ctx: StudioContext, base: Scene, message: str, new_ids: list[str], *, editing: bool
) -> AsyncIterator[TurnStep | WirePlan | WireEdit]:
    """Ask for the plan (again when an answer does not validate, up to UI_PLAN_ATTEMPTS); yields progress steps with
    the provisional board, and last the validated plan. Raises PlanError after the last try."""
    max_objects = ctx.settings.ui_max_objects
    counts = asks_for_copies(message)
    if editing:
        schema = edit_schema([o.name for o in base.objects], max_objects, counts=counts)
    else:
        schema = plan_schema(max_objects, counts=counts)
    messages = planning_context(ctx, base, message, editing=editing)
    started = asyncio.get_running_loop().time()
    error = PlanError("The planner gave no answer.")
    for _ in range(ctx.settings.ui_plan_attempts):
        stream = PlanStream(max_objects, WireEdit if editing else WirePlan)
        deltas = ctx.services.llm.stream_json(
            messages,
            schema,
            "scene_edit" if editing else "scene_plan",
            max_tokens=ctx.settings.ui_plan_max_tokens,
            min_tokens=plan_min_tokens(),
        )
        async with contextlib.aclosing(with_ticks(deltas, TICK_S)) as events:
            async for delta in events:
                if delta is not None and not stream.feed(delta) and not stream.repeated:
                    continue
                if stream.repeated:
                    break  # the model started over on an object it already listed: the plan ends here
                seconds = asyncio.get_running_loop().time() - started
                note = planning_note(seconds, len(stream.objects), editing=editing)
                yield TurnStep(note, provisional(base, stream, new_ids), True)
        try:
            plan = stream.plan()
        except PlanError as e:
            error = e
            continue
        yield plan
        return
    raise error


def provisional(base: Scene, stream: PlanStream, new_ids: list[str]) -> Scene:
    """The board while the plan streams: the scene with the cards read so far (removals wait for the end)."""
    found = stream.found
    edit = WireEdit(add=found.get("objects", []) + found.get("add", []), change=found.get("change", []))
    while len(new_ids) < len(edit.add):
        new_ids.append(new_id("obj-"))
    return base.model_copy(update={"objects": apply_edit(base.objects, edit, new_ids)})


async def save_plan(
    ctx: StudioContext, current: Scene | None, base: Scene, plan: WirePlan | WireEdit, message: str, ids: list[str]
) -> TurnStep:
    """Apply the validated plan to the scene as it is now (re-read under its lock: cards may have changed while the
    LLM planned) and save it; a new scene is saved for the first time."""
    edit = plan if isinstance(plan, WireEdit) else WireEdit(add=plan.objects)
    while len(ids) < len(edit.add):
        ids.append(new_id("obj-"))
    if current is None:
        scene = base
        reply = apply_plan(scene, edit, plan, message, ids, ctx.settings.ui_max_objects)
        ctx.workspace.save(scene)
        return TurnStep(reply, scene)
    fresh = current
    try:
        async with ctx.workspace.edit(current.id) as scene:
            fresh = scene  # as it is now, unchanged when the plan is refused below
            reply = apply_plan(scene, edit, plan, message, ids, ctx.settings.ui_max_objects)
    except NothingChanged:
        return TurnStep(nothing_changed(message), fresh)
    except PlanError as e:
        return TurnStep(f"{e} Nothing was changed.", fresh)
    return TurnStep(reply, scene)


def apply_plan(
    scene: Scene, edit: WireEdit, plan: WirePlan | WireEdit, message: str, ids: list[str], max_objects: int
) -> str:
    """Change `scene` in place by the plan; the reply. Raises NothingChanged (an edit that changes nothing) or
    PlanError (more objects than allowed)."""
    before = scene.objects
    after = apply_edit(before, edit, ids)
    if len(after) > max_objects:
        raise PlanError(f"The plan would have {len(after)} objects; the limit is {max_objects}.")
    if isinstance(plan, WirePlan):
        scene.name, scene.request, changes = plan.scene, message, None
    else:
        changes = plan_changes(before, after)
        if not any(changes.values()):
            raise NothingChanged
    scene.objects = after
    reply = describe_plan(scene.name, scene.objects, changes)
    scene.chat += exchange(message, reply, "plan")
    return reply


def exchange(message: str, reply: str, kind: str) -> list[ChatRecord]:
    return [
        ChatRecord(role="user", content=message, kind=kind),  # type: ignore[arg-type]
        ChatRecord(role="assistant", content=reply, kind=kind),  # type: ignore[arg-type]
    ]
