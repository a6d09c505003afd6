"""What every event handler of the page shares: the scene as page values, refusals and failed saves as Gradio
errors, the GPU concurrency group, and `bind`, which turns a handler `fn(ctx, ...)` into the callable Gradio wires.

A scene travels between events as its JSON payload (the page's scene State and the JSON that API clients receive);
`scene_of` validates it once at the start of the event that reads it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import gradio as gr

from studio import board, jobs
from studio.context import StudioContext
from studio.workspace import Scene, StorageError

GPU = "gpu"  # the one concurrency group of every event that makes a service use its GPU

Payload = dict[str, Any] | None
SceneOut = tuple[Payload, Payload]  # (the State that drives the page, the JSON that API clients receive)


def scene_payload(scene: Scene | None) -> Payload:
    return scene.model_dump(mode="json") if scene is not None else None


def scene_out(scene: Scene | None) -> SceneOut:
    payload = scene_payload(scene)
    return payload, payload


def scene_of(data: Payload) -> Scene | None:
    """The scene on screen, from the payload the page holds."""
    return Scene.model_validate(data) if data else None


@contextlib.contextmanager
def shown_to_user() -> Iterator[None]:
    """What the user can act on, a refusal or a save that failed (the disk is full, read-only, a file is in the
    way), becomes the Gradio error the page shows, in the operation's own words; anything else stays a bug."""
    try:
        yield
    except (board.UserError, StorageError) as e:
        raise gr.Error(str(e)) from None


async def stream_scene(gen: AsyncIterator[Scene]) -> AsyncIterator[SceneOut]:
    """An operation's scene snapshots as page values; refusals and failed saves become a friendly Gradio error."""
    with shown_to_user():
        async for scene in gen:
            yield scene_out(scene)


async def once(coro: Any) -> SceneOut:
    with shown_to_user():
        return scene_out(await coro)


def bind(fn: Callable[..., Any], ctx: StudioContext) -> Callable[..., Any]:
    """`fn` with its first argument, the context, filled in, and what the user can act on shown as a Gradio error
    (`shown_to_user`). Gradio reads a handler's definition: whether it is a coroutine or an async generator, its
    parameter names (API clients may pass them by name) and their type hints (`gr.SelectData`), so the bound
    handler keeps all of these; `functools.partial` would hide the hints."""
    handler: Callable[..., Any]
    if inspect.isasyncgenfunction(fn):

        async def handler(*args: Any) -> Any:
            with shown_to_user():
                async for value in fn(ctx, *args):
                    yield value

    elif inspect.iscoroutinefunction(fn):

        async def handler(*args: Any) -> Any:
            with shown_to_user():
                return await fn(ctx, *args)

    else:

        def handler(*args: Any) -> Any:
            with shown_to_user():
                return fn(ctx, *args)

    functools.update_wrapper(handler, fn)  # name, doc, and `__wrapped__`, where type hints are resolved
    signature = inspect.signature(fn)
    ctx_param, *params = signature.parameters.values()
    handler.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    handler.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != ctx_param.name}
    return handler


async def stream_3d(
    ctx: StudioContext,
    sid: str,
    object_ids: list[str] | None,
    seed: float,
    ss_steps: float,
    slat_steps: float,
    ss_cfg: float,
    slat_cfg: float,
    no_texture: bool,
) -> AsyncIterator[SceneOut]:
    """3D jobs for the given cards (None: every card with an image and no model) from the page's 3D settings."""
    params = jobs.job_params(int(seed or 0), int(ss_steps), int(slat_steps), ss_cfg, slat_cfg, no_texture)
    async for value in stream_scene(jobs.generate_3d(ctx, sid, object_ids, params)):  # the scene as it is first
        yield value
