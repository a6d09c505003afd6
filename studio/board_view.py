"""What the object board and the preview show, as plain values: each card's texts, states and button states, the
changes a scene makes to the card slots, and the preview's choices and files. No Gradio here (`board_slots.py`
turns these values into component updates), so every rule is testable on a `Scene` alone.
"""

from __future__ import annotations

from typing import Any

from studio.planner import md_escape
from studio.workspace import Scene, SceneObject, Workspace

STATE_LABELS = {
    "waiting": "⏳ waiting for its image",
    "generating": "🎨 drawing…",
    "ready": "✅ image ready",
    "filtered": "🚫 filtered",
    "failed": "⚠️ failed",
}
# The outputs of a card slot that follow its object, in the order the slot lists them.
SLOT_OUTPUTS = ("column", "oid", "header", "image", "prompt", "redraw", "gallery", "to_3d", "cancel")

Props = dict[str, Any]  # keyword arguments of one component update


def model_status(obj: SceneObject) -> str:
    """One line about the card's 3D model: progress while a job runs, the outcome after."""
    job = obj.job
    if obj.model_state == "queued" and job:
        pos = f" (position {job.queue_position})" if job.queue_position is not None else ""
        return f"🧊 3D queued{pos}"
    if obj.model_state == "running" and job:
        stage = f" — {job.stage}" if job.stage else ""
        return f"🧊 3D running{stage} · {round(job.progress * 100)} %"
    if obj.model_state == "ready" and obj.model:
        backend = f" ({obj.model.backend})" if obj.model.backend else ""
        return f"🧊 3D ready{backend} · seed {obj.model.seed}"
    if obj.model_state in ("failed", "filtered", "cancelled"):
        return f"🧊 3D {obj.model_state}: {md_escape(obj.model_error)}"
    return ""


def card_header(obj: SceneObject) -> str:
    count = f" ×{obj.count}" if obj.count > 1 else ""
    lines = [f"**{md_escape(obj.name)}**{count} · {STATE_LABELS[obj.state]}"]
    if obj.error:
        lines.append(f"<small>{md_escape(obj.error)}</small>")
    if obj.image:
        source = "uploaded" if obj.image.source == "upload" else f"seed {obj.image.seed}"
        lines.append(f"<small>image: {source}</small>")
    status = model_status(obj)
    if status:
        lines.append(f"<small>{status}</small>")
    return "  \n".join(lines)


def slot_props(ws: Workspace, scene_id: str, obj: SceneObject | None) -> dict[str, Props]:
    """What each output of one slot should show for this object (None: an empty, hidden slot)."""
    if obj is None:
        return {"column": {"visible": False}}
    image = str(ws.path(scene_id, obj.image.file)) if obj.image else None
    variants = [str(ws.path(scene_id, v.file)) for v in obj.variants]
    busy = obj.model_state in ("queued", "running")
    return {
        "column": {"visible": True, "elem_classes": ["card", f"card-{obj.state}"]},
        "oid": {"value": obj.id},
        "header": {"value": card_header(obj)},
        "image": {"value": image},
        "prompt": {"value": obj.prompt},
        "redraw": {
            "value": "Retry" if obj.state in ("failed", "filtered") else "New image",
            "interactive": obj.state != "generating",
        },
        "gallery": {"value": variants, "visible": bool(variants)},
        "to_3d": {"interactive": obj.image is not None and obj.state == "ready" and not busy},
        "cancel": {"visible": busy},
    }


def board_changes(
    ws: Workspace, scene: Scene | None, shown: dict[str, Any] | None, n_slots: int
) -> tuple[list[Props | None], dict[str, Any]]:
    """For every slot output (slot by slot, `SLOT_OUTPUTS` order) the props it should change to, or None where it
    already shows them (so a progress tick never resets a prompt being typed), and the new on-screen record."""
    objects = scene.objects if scene else []
    before = shown or {}
    after: dict[str, Any] = {}
    changes: list[Props | None] = []
    for i in range(n_slots):
        obj = objects[i] if i < len(objects) else None
        props = slot_props(ws, scene.id if scene else "", obj)
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
