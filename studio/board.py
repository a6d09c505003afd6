"""Object-board operations on concept images: draw, variants, pick, upload, edit prompt, delete (3D: `jobs`).

Each operation is an async generator of `Scene` snapshots, so the UI can show every card change the moment it
happens. Network calls never run under the scene lock: a result is applied afterwards to the freshly loaded
scene, and dropped if its object was deleted or its prompt changed meanwhile (the file stays on disk).

A card that has an image never loses it to a failed redraw: it keeps its image, model and state, and the error
becomes a note on the card. Nothing is drawn while text-to-image is off; such cards wait for an upload. Drawing
first checks that the images folder takes a file, so a full or read-only disk stops it before any card changes; an
image that still cannot be saved is a failed draw of its card, like a service error.
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

from servicekit.protocol import MAX_SEED
from studio.clients import ContentFiltered, ServiceError
from studio.context import StudioContext
from studio.status import draw_refusal
from studio.workspace import ImageRef, Scene, SceneObject, StorageError

MAX_VARIANTS = 4
IMAGEGEN_OFF_NOTE = "Text-to-image is off: upload an image for this object."


class UserError(Exception):
    """A request the studio refuses, with a message for the user."""


def random_seed() -> int:
    """1..MAX_SEED: any seed the services accept except 0, which asks them to pick one."""
    return secrets.randbelow(MAX_SEED) + 1


def _obj(scene: Scene, object_id: str) -> SceneObject:
    obj = scene.find(object_id)
    if obj is None:
        raise UserError("That object is no longer in the scene.")
    return obj


# --- images ----------------------------------------------------------------------------------------------------
def _needs_image(obj: SceneObject) -> bool:
    return obj.image is None and obj.state in ("waiting", "failed")


async def draw_refusal_now(ctx: StudioContext) -> str:
    """Why images cannot be drawn now, for the user ("" when they can)."""
    return draw_refusal((await ctx.health()).trellis)


async def draw_images(ctx: StudioContext, scene_id: str, object_ids: list[str] | None = None) -> AsyncIterator[Scene]:
    """Draw the given cards with a new seed (all cards still waiting when none are given); each card is saved and
    yielded as soon as its own image arrives."""
    refusal = await draw_refusal_now(ctx)
    if refusal:
        raise UserError(refusal)
    ws = ctx.workspace
    async with ws.edit(scene_id) as scene:
        targets = [o for o in scene.objects if (o.id in object_ids if object_ids else _needs_image(o))]
        if targets:
            ws.check_writable(scene_id, "images")
        for o in targets:
            o.state, o.error = "generating", ""
        jobs = [(o.id, o.prompt) for o in targets]
    yield scene
    gate = asyncio.Semaphore(ctx.settings.ui_image_concurrency)

    async def one(object_id: str, prompt: str) -> tuple[str, str, ImageRef | ServiceError | StorageError]:
        """Draw and save one card's image (a new file, so outside the scene lock)."""
        async with gate:
            try:
                images = await ctx.services.trellis.generate_images(
                    prompt, n=1, seed=random_seed(), size=ctx.settings.imagegen_size or 512
                )
                rel = ws.write_image(scene_id, object_id, images[0].seed, images[0].png)
                return object_id, prompt, ImageRef(file=rel, seed=images[0].seed)
            except (ServiceError, StorageError) as e:
                return object_id, prompt, e

    for next_done in asyncio.as_completed([one(i, p) for i, p in jobs]):
        object_id, prompt, outcome = await next_done
        async with ws.edit(scene_id) as scene:
            obj = scene.find(object_id)
            if obj is not None and obj.prompt == prompt:
                _apply_image(obj, outcome)
        yield scene


def _apply_image(obj: SceneObject, outcome: ImageRef | ServiceError | StorageError) -> None:
    if isinstance(outcome, ImageRef):
        _set_image(obj, outcome)
    elif obj.image is not None:
        obj.state, obj.error = "ready", f"No new image: {outcome.message}"  # the card keeps what it has
    elif isinstance(outcome, ContentFiltered):
        obj.state, obj.error = "filtered", outcome.message
    elif isinstance(outcome, ServiceError) and outcome.code == "imagegen_off":
        obj.state, obj.error = "waiting", IMAGEGEN_OFF_NOTE  # not a failure of the card: it needs an upload
    else:
        obj.state, obj.error = "failed", outcome.message


def _set_image(obj: SceneObject, image: ImageRef) -> None:
    """A new chosen image; the old model no longer matches it (its file stays on disk)."""
    obj.image, obj.state, obj.error = image, "ready", ""
    obj.model, obj.model_state, obj.model_error, obj.job = None, "none", "", None


async def make_variants(ctx: StudioContext, scene_id: str, object_id: str, n: int) -> AsyncIterator[Scene]:
    """Draw `n` (1–4) alternatives with fresh seeds; the card keeps its image until the user picks one."""
    n = max(1, min(MAX_VARIANTS, int(n)))
    refusal = await draw_refusal_now(ctx)
    if refusal:
        raise UserError(refusal)
    ctx.workspace.check_writable(scene_id, "images")
    async with ctx.workspace.edit(scene_id) as scene:
        prompt = _obj(scene, object_id).prompt
        _obj(scene, object_id).error = ""
    yield scene
    try:
        images = await ctx.services.trellis.generate_images(
            prompt, n=n, seed=random_seed(), size=ctx.settings.imagegen_size or 512
        )
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
        obj.prompt, obj.error = prompt, ""
        if obj.image is None:  # a card with an image keeps it until the new prompt's image arrives
            obj.state = "waiting"
    return scene


async def delete_object(ctx: StudioContext, scene_id: str, object_id: str) -> Scene:
    """Drop the card from the plan; its images and models stay on disk."""
    async with ctx.workspace.edit(scene_id) as scene:
        scene.objects = [o for o in scene.objects if o.id != object_id]
    return scene
