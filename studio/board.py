"""Object-board operations: concept images (draw, variants, pick, upload, edit prompt, delete) and 3D jobs.

Each operation is an async generator of `Scene` snapshots, so the UI can show every card change the moment it
happens. Network calls never run under the scene lock: a result is applied afterwards to the freshly loaded
scene, and dropped if its object was deleted or its prompt changed meanwhile (the file stays on disk).
"""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from studio.clients import ContentFiltered, ServiceError
from studio.context import StudioContext
from studio.workspace import ImageRef, JobProgress, ModelRef, Scene, SceneObject

MAX_SEED = 2**31 - 1
MAX_VARIANTS = 4
FINISHED = {"succeeded", "failed", "cancelled", "filtered"}


class UserError(Exception):
    """A request the studio refuses, with a message for the user."""


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED) + 1


def _obj(scene: Scene, object_id: str) -> SceneObject:
    obj = scene.find(object_id)
    if obj is None:
        raise UserError("That object is no longer in the scene.")
    return obj


# --- images ----------------------------------------------------------------------------------------------------
def _needs_image(obj: SceneObject) -> bool:
    return obj.image is None and obj.state in ("waiting", "failed")


async def draw_images(ctx: StudioContext, scene_id: str, object_ids: list[str] | None = None) -> AsyncIterator[Scene]:
    """Draw the given cards with a new seed (all cards still waiting when none are given); each card is saved and
    yielded as soon as its own image arrives."""
    ws = ctx.workspace
    async with ws.edit(scene_id) as scene:
        targets = [o for o in scene.objects if (o.id in object_ids if object_ids else _needs_image(o))]
        for o in targets:
            o.state, o.error = "generating", ""
        jobs = [(o.id, o.prompt) for o in targets]
    yield scene
    gate = asyncio.Semaphore(ctx.settings.ui_image_concurrency)

    async def one(object_id: str, prompt: str) -> tuple[str, str, Any]:
        async with gate:
            try:
                images = await ctx.services.trellis.generate_images(prompt, n=1, seed=random_seed(),
                                                                     size=ctx.settings.imagegen_size or 512)
                return object_id, prompt, images[0]
            except ServiceError as e:
                return object_id, prompt, e

    for next_done in asyncio.as_completed([one(i, p) for i, p in jobs]):
        object_id, prompt, outcome = await next_done
        async with ws.edit(scene_id) as scene:
            obj = scene.find(object_id)
            if obj is not None and obj.prompt == prompt:
                _apply_image(ctx, scene, obj, outcome)
        yield scene


def _apply_image(ctx: StudioContext, scene: Scene, obj: SceneObject, outcome: Any) -> None:
    if isinstance(outcome, ContentFiltered):
        obj.state, obj.error = "filtered", outcome.message
    elif isinstance(outcome, ServiceError):
        hint = " Upload your own image instead." if outcome.code == "imagegen_off" else ""
        obj.state, obj.error = "failed", outcome.message + hint
    else:
        rel = ctx.workspace.write_image(scene.id, obj.id, outcome.seed, outcome.png)
        _set_image(obj, ImageRef(file=rel, seed=outcome.seed))


def _set_image(obj: SceneObject, image: ImageRef) -> None:
    """A new chosen image; the old model no longer matches it (its file stays on disk)."""
    obj.image, obj.state, obj.error = image, "ready", ""
    obj.model, obj.model_state, obj.model_error, obj.job = None, "none", "", None


async def make_variants(ctx: StudioContext, scene_id: str, object_id: str, n: int) -> AsyncIterator[Scene]:
    """Draw `n` (1–4) alternatives with fresh seeds; the card keeps its image until the user picks one."""
    n = max(1, min(MAX_VARIANTS, int(n)))
    async with ctx.workspace.edit(scene_id) as scene:
        prompt = _obj(scene, object_id).prompt
        _obj(scene, object_id).error = ""
    yield scene
    try:
        images = await ctx.services.trellis.generate_images(prompt, n=n, seed=random_seed(),
                                                            size=ctx.settings.imagegen_size or 512)
        outcome: Any = None
    except ServiceError as e:
        images, outcome = [], e
    async with ctx.workspace.edit(scene_id) as scene:
        obj = _obj(scene, object_id)
        if outcome is not None:
            obj.error = outcome.message
        for img in images:
            rel = ctx.workspace.write_image(scene_id, object_id, img.seed, img.png)
            obj.variants.append(ImageRef(file=rel, seed=img.seed))
        obj.variants = obj.variants[-MAX_VARIANTS:]
    yield scene


async def pick_variant(ctx: StudioContext, scene_id: str, object_id: str, index: int) -> Scene:
    async with ctx.workspace.edit(scene_id) as scene:
        obj = _obj(scene, object_id)
        if not 0 <= index < len(obj.variants):
            raise UserError("That variant is no longer there.")
        _set_image(obj, obj.variants[index])
    return scene


def to_png(path: str | Path, max_side: int) -> bytes:
    """An uploaded file as a PNG no larger than `max_side`, keeping transparency (the 3D step uses alpha)."""
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, ValueError) as e:
        raise UserError("That file is not an image the studio can read.") from e


async def upload_image(ctx: StudioContext, scene_id: str, object_id: str, path: str) -> Scene:
    png = to_png(path, max_side=max(ctx.settings.imagegen_size or 512, 1024))
    seed = int(time.time() * 1000) % MAX_SEED  # uploads have no seed; a timestamp keeps file names unique
    async with ctx.workspace.edit(scene_id) as scene:
        obj = _obj(scene, object_id)
        rel = ctx.workspace.write_image(scene_id, object_id, seed, png)
        _set_image(obj, ImageRef(file=rel, seed=seed, source="upload"))
    return scene


async def edit_prompt(ctx: StudioContext, scene_id: str, object_id: str, prompt: str) -> Scene:
    prompt = " ".join((prompt or "").split())
    if not prompt:
        raise UserError("The prompt cannot be empty; describe the object to draw.")
    if len(prompt) > ctx.settings.max_prompt_chars:
        raise UserError(f"The prompt is too long (at most {ctx.settings.max_prompt_chars} characters).")
    async with ctx.workspace.edit(scene_id) as scene:
        obj = _obj(scene, object_id)
        obj.prompt, obj.state, obj.error = prompt, "waiting", ""
    return scene


async def delete_object(ctx: StudioContext, scene_id: str, object_id: str) -> Scene:
    """Drop the card from the plan; its images and models stay on disk."""
    async with ctx.workspace.edit(scene_id) as scene:
        scene.objects = [o for o in scene.objects if o.id != object_id]
    return scene


# --- 3D --------------------------------------------------------------------------------------------------------
def job_params(seed: int, ss_steps: int, slat_steps: int, ss_cfg: float, slat_cfg: float,
               no_texture: bool) -> dict[str, Any]:
    """The 3D settings as the jobs API wants them (seed 0 = let the service choose)."""
    return {"seed": max(0, int(seed or 0)), "ss_sampling_steps": int(ss_steps), "slat_sampling_steps": int(slat_steps),
            "ss_cfg_scale": float(ss_cfg), "slat_cfg_scale": float(slat_cfg), "no_texture": bool(no_texture),
            "output_format": "glb"}


def _wants_3d(obj: SceneObject, object_ids: list[str] | None) -> bool:
    if obj.image is None or obj.state != "ready":
        return False
    if object_ids:
        return obj.id in object_ids
    return obj.model_state not in ("ready", "queued", "running")


async def generate_3d(ctx: StudioContext, scene_id: str, object_ids: list[str] | None,
                      params: dict[str, Any]) -> AsyncIterator[Scene]:
    """Submit a 3D job per card (all cards with an image and no model when none are given) and follow each job,
    yielding whenever a card's queue position, stage, percent or outcome changes."""
    ctx.cancelled.discard(scene_id)
    scene = ctx.workspace.load(scene_id)
    targets = [(o.id, o.image.file) for o in scene.objects if _wants_3d(o, object_ids) and o.image]
    active: dict[str, str] = {}  # object id -> job id
    for object_id, image_file in targets:
        outcome: Any
        try:
            png = ctx.workspace.path(scene_id, image_file).read_bytes()
            outcome = await ctx.services.trellis.submit_job(png, params)
        except (ServiceError, OSError) as e:
            outcome = e
        async with ctx.workspace.edit(scene_id) as scene:
            obj = scene.find(object_id)
            if obj is not None:
                _apply_submit(obj, outcome, active)
        yield scene
    async for scene in _follow(ctx, scene_id, active, params):
        yield scene


def _apply_submit(obj: SceneObject, outcome: Any, active: dict[str, str]) -> None:
    if isinstance(outcome, ContentFiltered):
        obj.model_state, obj.model_error, obj.job = "filtered", outcome.message, None
    elif isinstance(outcome, ServiceError):
        obj.model_state, obj.model_error, obj.job = "failed", outcome.message, None
    elif isinstance(outcome, OSError):
        obj.model_state, obj.model_error, obj.job = "failed", "The card's image file is missing.", None
    else:
        obj.model_state, obj.model_error = "queued", ""
        obj.job = JobProgress(id=str(outcome["id"]), queue_position=outcome.get("queue_position"))
        active[obj.id] = obj.job.id


async def _follow(ctx: StudioContext, scene_id: str, active: dict[str, str],
                  params: dict[str, Any]) -> AsyncIterator[Scene]:
    trellis = ctx.services.trellis
    last_answer = time.monotonic()
    while active:
        if scene_id in ctx.cancelled:
            await asyncio.gather(*(trellis.cancel(j) for j in active.values()), return_exceptions=True)
        await asyncio.sleep(ctx.settings.ui_job_poll_s)
        polled = await asyncio.gather(*(trellis.job(j) for j in active.values()), return_exceptions=True)
        if any(isinstance(p, dict) for p in polled):
            last_answer = time.monotonic()
        elif time.monotonic() - last_answer > ctx.settings.ui_http_timeout_s:
            async for scene in _give_up(ctx, scene_id, active):  # the service is gone: say so, stop waiting
                yield scene
            return
        changed = False
        results: dict[str, tuple[bytes, dict[str, str]] | BaseException] = {}
        for (object_id, job_id), status in zip(list(active.items()), polled, strict=True):
            if isinstance(status, dict) and status.get("status") == "succeeded":
                try:
                    results[object_id] = await trellis.result(job_id)
                except ServiceError as e:
                    results[object_id] = e
        async with ctx.workspace.edit(scene_id) as scene:
            for (object_id, job_id), status in zip(list(active.items()), polled, strict=True):
                obj = scene.find(object_id)
                if obj is None or obj.job is None or obj.job.id != job_id:
                    active.pop(object_id)  # deleted, or superseded by a newer job for this card
                    continue
                done, moved = _apply_status(ctx, scene, obj, status, results.get(object_id), params)
                changed |= moved
                if done:
                    active.pop(object_id)
        if changed:
            yield scene


async def _give_up(ctx: StudioContext, scene_id: str, active: dict[str, str]) -> AsyncIterator[Scene]:
    async with ctx.workspace.edit(scene_id) as scene:
        for object_id, job_id in active.items():
            obj = scene.find(object_id)
            if obj is not None and obj.job is not None and obj.job.id == job_id:
                obj.model_state, obj.job = "failed", None
                obj.model_error = "Lost contact with the 3D service; press → 3D to try again."
    active.clear()
    yield scene


def _apply_status(ctx: StudioContext, scene: Scene, obj: SceneObject, status: Any, result: Any,
                  params: dict[str, Any]) -> tuple[bool, bool]:
    """Update one card from a job status; returns (finished, visibly changed)."""
    assert obj.job is not None
    if isinstance(status, ServiceError):
        if status.status == 404:
            obj.model_state, obj.model_error, obj.job = "failed", "The 3D service lost this job; try again.", None
            return True, True
        return False, False  # a transient polling error: keep following
    if isinstance(status, BaseException):
        return False, False
    before = (obj.job.status, obj.job.stage, round(obj.job.progress, 2), obj.job.queue_position)
    obj.job.status = str(status.get("status", obj.job.status))
    obj.job.stage = str(status.get("stage") or "")
    obj.job.progress = float(status.get("progress") or 0.0)
    obj.job.queue_position = status.get("queue_position")
    state = obj.job.status
    if state in ("queued", "running"):
        obj.model_state = state  # type: ignore[assignment]
        return False, before != (state, obj.job.stage, round(obj.job.progress, 2), obj.job.queue_position)
    error = str(status.get("error") or "")
    if state == "succeeded" and isinstance(result, tuple):
        data, headers = result
        seed = int(headers.get("seed") or status.get("seed") or 0)
        ext = str(status.get("output_format") or "glb")
        rel = ctx.workspace.write_model(scene.id, obj.id, seed, data, ext)
        backend = headers.get("backend") or str(status.get("backend") or "")
        obj.model = ModelRef(file=rel, seed=seed, backend=backend, params=params)
        obj.model_state, obj.model_error = "ready", ""
    elif state == "succeeded":
        obj.model_state, obj.model_error = "failed", getattr(result, "message", "The model could not be fetched.")
    elif state == "filtered":
        obj.model_state, obj.model_error = "filtered", error or "The safety check refused this image."
    elif state == "cancelled":
        obj.model_state, obj.model_error = "cancelled", "Cancelled."
    else:
        obj.model_state, obj.model_error = "failed", error or "The 3D job failed."
    obj.job = None
    return True, True


async def cancel_jobs(ctx: StudioContext, scene_id: str, object_id: str | None = None) -> None:
    """Cancel one card's job, or (no object id) the whole batch of this scene."""
    scene = ctx.workspace.load(scene_id)
    if object_id is None:
        ctx.cancelled.add(scene_id)
    jobs = [o.job.id for o in scene.objects if o.job and (object_id is None or o.id == object_id)]
    await asyncio.gather(*(ctx.services.trellis.cancel(j) for j in jobs), return_exceptions=True)
