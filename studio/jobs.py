"""3D jobs for the board's cards: submit each card's image to the 3D service's jobs API, follow every job's queue
position, stage and percent, save the GLB when it succeeds, and cancel one job or a whole batch.

Like `studio.board`, each operation yields `Scene` snapshots and applies results to the freshly loaded scene
under its lock; a job whose card was deleted or given a newer job is simply dropped. Nothing is submitted unless
the models folder takes a file, so a full or read-only disk stops a batch before it uses the GPU; a model that
still cannot be saved fails its card with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from servicekit.protocol import MAX_SEED
from studio.clients import ContentFiltered, ServiceError
from studio.context import StudioContext
from studio.status import part_state, wants_3d
from studio.workspace import JobProgress, ModelRef, Scene, SceneObject, StorageError


def job_params(
    seed: int, ss_steps: int, slat_steps: int, ss_cfg: float, slat_cfg: float, no_texture: bool
) -> dict[str, Any]:
    """The 3D settings as the jobs API wants them (seed 0 = let the service choose)."""
    return {
        "seed": min(max(0, int(seed or 0)), MAX_SEED),
        "ss_sampling_steps": int(ss_steps),
        "slat_sampling_steps": int(slat_steps),
        "ss_cfg_scale": float(ss_cfg),
        "slat_cfg_scale": float(slat_cfg),
        "no_texture": bool(no_texture),
        "output_format": "glb",
    }


def _wants_3d(obj: SceneObject, object_ids: list[str] | None) -> bool:
    if object_ids:
        return obj.image is not None and obj.state == "ready" and obj.id in object_ids
    return wants_3d(obj)


async def generate_3d(
    ctx: StudioContext, scene_id: str, object_ids: list[str] | None, params: dict[str, Any]
) -> AsyncIterator[Scene]:
    """Submit a 3D job per card (all cards with an image and no model when none are given) and follow each job,
    yielding the scene as it is first (so a caller always has one, even with nothing to do), then whenever a card's
    queue position, stage, percent or outcome changes."""
    ctx.cancelled.discard(scene_id)
    scene = ctx.workspace.load(scene_id)
    yield scene
    textured, _ = part_state((await ctx.health()).trellis, "texture")
    if not textured:  # the 3D service cannot bake textures here (the header says why): ask for what it can make
        params = {**params, "no_texture": True}
    targets = [(o.id, o.image.file) for o in scene.objects if _wants_3d(o, object_ids) and o.image]
    if targets:
        ctx.workspace.check_writable(scene_id, "models")
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


async def _follow(
    ctx: StudioContext, scene_id: str, active: dict[str, str], params: dict[str, Any]
) -> AsyncIterator[Scene]:
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
        results: dict[str, ModelRef | ServiceError | StorageError] = {}
        for (object_id, job_id), status in zip(list(active.items()), polled, strict=True):
            if isinstance(status, dict) and status.get("status") == "succeeded":
                results[object_id] = await _save_model(ctx, scene_id, object_id, job_id, status, params)
        async with ctx.workspace.edit(scene_id) as scene:
            for (object_id, job_id), status in zip(list(active.items()), polled, strict=True):
                obj = scene.find(object_id)
                if obj is None or obj.job is None or obj.job.id != job_id:
                    active.pop(object_id)  # deleted, or superseded by a newer job for this card
                    continue
                done, moved = _apply_status(obj, status, results.get(object_id))
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
                obj.model_error = "Lost contact with the 3D service; press Make 3D to try again."
    active.clear()
    yield scene


async def _save_model(
    ctx: StudioContext, scene_id: str, object_id: str, job_id: str, status: dict[str, Any], params: dict[str, Any]
) -> ModelRef | ServiceError | StorageError:
    """Fetch a finished job's model and save it in the scene folder (a new file, so outside the scene lock)."""
    try:
        data, headers = await ctx.services.trellis.result(job_id)
        seed = int(headers.get("seed") or status.get("seed") or 0)
        ext = str(status.get("output_format") or "glb")
        rel = ctx.workspace.write_model(scene_id, object_id, seed, data, ext)
    except (ServiceError, StorageError) as e:
        return e
    backend = headers.get("backend") or str(status.get("backend") or "")
    return ModelRef(file=rel, seed=seed, backend=backend, params=params)


def _apply_status(
    obj: SceneObject, status: Any, result: ModelRef | ServiceError | StorageError | None
) -> tuple[bool, bool]:
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
    if state == "succeeded" and isinstance(result, ModelRef):
        obj.model, obj.model_state, obj.model_error = result, "ready", ""
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
