"""What the object board and the preview show, as plain values: each card's texts, state badge, buttons and which
one of them is the card's primary action, the changes a scene makes to the card slots, and the preview's choices
and files. No Gradio here (`board_slots.py` turns these values into component updates), so every rule is testable
on a `Scene` alone.
"""

from __future__ import annotations

import html
from typing import Any

from studio.words import plural
from studio.workspace import Scene, SceneObject, Workspace

# Card states as the badge says them, with the badge's tone (`theme.py` styles each tone).
STATE_LABELS = {
    "waiting": "waiting for its image",
    "generating": "drawing…",
    "ready": "image ready",
    "filtered": "filtered",
    "failed": "failed",
}
STATE_TONES = {"waiting": "neutral", "generating": "info", "ready": "ok", "filtered": "bad", "failed": "bad"}
NEEDS_UPLOAD = "needs an image: upload one"
REDRAWING = "drawing a new image…"
MODEL_LABELS = {
    "queued": "3D queued",
    "running": "making 3D",
    "ready": "3D ready",
    "failed": "3D failed",
    "filtered": "3D filtered",
    "cancelled": "3D cancelled",
}
MODEL_TONES = {
    "queued": "info",
    "running": "info",
    "ready": "ok",
    "failed": "bad",
    "filtered": "bad",
    "cancelled": "neutral",
}
# The outputs of a card slot that follow its object, in the order the slot lists them.
SLOT_OUTPUTS = (
    "column",
    "oid",
    "header",
    "image",
    "prompt",
    "redraw",
    "gallery",
    "to_3d",
    "cancel",
    "show",
    "upload",
    "use_prompt",
    "variants",
)
# The card's buttons that can be its one primary action.
ACTIONS = ("redraw", "upload", "to_3d", "cancel", "show")

Props = dict[str, Any]  # keyword arguments of one component update


def model_status(obj: SceneObject) -> str:
    """One line about the card's 3D model: progress while a job runs, the outcome after."""
    job = obj.job
    if obj.model_state == "queued" and job:
        pos = f" (position {job.queue_position})" if job.queue_position is not None else ""
        return f"3D queued{pos}"
    if obj.model_state == "running" and job:
        stage = f" — {job.stage}" if job.stage else ""
        return f"3D running{stage} · {round(job.progress * 100)} %"
    if obj.model_state == "ready" and obj.model:
        backend = f" ({obj.model.backend})" if obj.model.backend else ""
        return f"3D ready{backend} · seed {obj.model.seed}"
    if obj.model_state in ("failed", "filtered", "cancelled"):
        return f"3D {obj.model_state}: {obj.model_error}"
    return ""


def card_state(obj: SceneObject, draw_blocked: str = "") -> tuple[str, str]:
    """The card's badge, (label, tone): where the object stands now, its 3D model once it has an image."""
    if obj.state == "generating":
        return (REDRAWING if obj.image else STATE_LABELS["generating"]), "info"
    if obj.image is not None and obj.model_state != "none":
        return MODEL_LABELS[obj.model_state], MODEL_TONES[obj.model_state]
    if obj.image is None and obj.state == "waiting" and draw_blocked:
        return NEEDS_UPLOAD, "warn"
    return STATE_LABELS[obj.state], STATE_TONES[obj.state]


def card_header(obj: SceneObject, draw_blocked: str = "") -> str:
    """The card's name, state badge, image source, 3D progress and any note, as HTML."""
    label, tone = card_state(obj, draw_blocked)
    count = f'<span class="card-count">×{obj.count}</span>' if obj.count > 1 else ""
    source = ""
    if obj.image:
        source = "uploaded image" if obj.image.source == "upload" else f"seed {obj.image.seed}"
    lines = [
        f'<div class="card-head"><span class="card-name">{html.escape(obj.name)}</span>{count}</div>',
        f'<div class="card-state"><span class="badge badge-{tone}">{html.escape(label)}</span>'
        f'<span class="card-meta">{source}</span></div>',
    ]
    if obj.model_state == "running" and obj.job:
        lines.append(f'<div class="progress"><span style="width:{round(obj.job.progress * 100)}%"></span></div>')
    status = model_status(obj)
    if status:
        lines.append(f'<div class="card-meta">{html.escape(status)}</div>')
    if obj.error:
        tone = "bad" if obj.state in ("failed", "filtered") else "note"
        lines.append(f'<p class="card-note card-note-{tone}">{html.escape(obj.error)}</p>')
    return "".join(lines)


def primary_action(obj: SceneObject, draw_blocked: str = "") -> str | None:
    """The one action a card puts forward (one of `ACTIONS`), or None while it draws: what moves it on."""
    if obj.model_state in ("queued", "running"):
        return "cancel"
    if obj.state == "generating":
        return None
    if obj.model_state == "ready" and obj.model:
        return "show"
    if obj.image is not None and obj.state == "ready":
        return "to_3d"
    return "upload" if draw_blocked else "redraw"


def slot_props(ws: Workspace, scene_id: str, obj: SceneObject | None, draw_blocked: str = "") -> dict[str, Props]:
    """What each output of one slot should show for this object (None: an empty, hidden slot). `draw_blocked` is
    why images cannot be drawn now ("" when they can): the drawing buttons then say so and stay disabled."""
    if obj is None:
        return {"column": {"visible": False}}
    image = str(ws.path(scene_id, obj.image.file)) if obj.image else None
    variants = [str(ws.path(scene_id, v.file)) for v in obj.variants]
    busy = obj.model_state in ("queued", "running")
    drawing = obj.state == "generating"
    primary = primary_action(obj, draw_blocked)
    why = f" ({draw_blocked})" if draw_blocked else ""
    redraw = "New image" if obj.image else "Retry" if obj.state in ("failed", "filtered") else "Draw image"

    def variant(action: str) -> str:
        return ("stop" if action == "cancel" else "primary") if action == primary else "secondary"

    return {
        "column": {"visible": True, "elem_classes": ["card", f"card-{obj.state}", f"card-3d-{obj.model_state}"]},
        "oid": {"value": obj.id},
        "header": {"value": card_header(obj, draw_blocked)},
        "image": {"value": image},
        "prompt": {"value": obj.prompt},
        "redraw": {
            "value": redraw + why,
            "interactive": not draw_blocked and not drawing,
            "variant": variant("redraw"),
        },
        "gallery": {"value": variants, "visible": bool(variants)},
        "to_3d": {
            "visible": obj.image is not None and not busy,
            "interactive": obj.image is not None and obj.state == "ready" and not busy,
            "variant": variant("to_3d"),
        },
        "cancel": {"visible": busy, "variant": variant("cancel")},
        "show": {"visible": obj.image is not None, "variant": variant("show")},
        "upload": {"variant": variant("upload")},
        "use_prompt": {"value": "Use prompt" + why, "interactive": not draw_blocked},
        "variants": {"value": "Draw variants" + why, "interactive": not draw_blocked},
    }


def board_changes(
    ws: Workspace, scene: Scene | None, shown: dict[str, Any] | None, n_slots: int, draw_blocked: str = ""
) -> tuple[list[Props | None], dict[str, Any]]:
    """For every slot output (slot by slot, `SLOT_OUTPUTS` order) the props it should change to, or None where it
    already shows them (so a progress tick never resets a prompt being typed), and the new on-screen record."""
    objects = scene.objects if scene else []
    before = shown or {}
    after: dict[str, Any] = {}
    changes: list[Props | None] = []
    for i in range(n_slots):
        obj = objects[i] if i < len(objects) else None
        props = slot_props(ws, scene.id if scene else "", obj, draw_blocked)
        for name in SLOT_OUTPUTS:
            key = f"{i}.{name}"
            want = props.get(name)
            if want is None or before.get(key) == want:
                changes.append(None)
                if key in before:
                    after[key] = before[key]
            else:
                changes.append(want)
                after[key] = want
    return changes, after


def scene_title(scene: Scene | None) -> str:
    """The board's title: the scene's name and how far its objects are, as HTML."""
    if scene is None or not scene.objects:
        return '<div class="scene-title"><span class="scene-name">New scene</span></div>'
    objects = scene.objects
    images = sum(o.image is not None for o in objects)
    models = sum(o.model is not None and o.model_state == "ready" for o in objects)
    meta = f"{plural(len(objects), 'object')} · {plural(images, 'image')} · {plural(models, 'model')}"
    return (
        f'<div class="scene-title"><span class="scene-name">{html.escape(scene.name)}</span>'
        f'<span class="scene-meta">{meta}</span></div>'
    )


def preview_choices(scene: Scene | None, selected: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """The preview's (name, object id) choices, and the selection it keeps (None once its object is gone)."""
    choices = [(o.name, o.id) for o in scene.objects] if scene else []
    keep = selected if any(v == selected for _, v in choices) else None
    return choices, keep


def preview_files(ws: Workspace, scene: Scene | None, object_id: str | None) -> list[str | None]:
    """The chosen object's image and model files, None where it has none."""
    obj = scene.find(object_id) if scene and object_id else None
    image = str(ws.path(scene.id, obj.image.file)) if scene and obj and obj.image else None
    glb = str(ws.path(scene.id, obj.model.file)) if scene and obj and obj.model else None
    return [image, glb]
