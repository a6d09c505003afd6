"""The status header and which actions are possible right now, from the services' health and the scene.

Nothing here blocks the page: an action that cannot work is disabled and its label ends with why, in brackets
(Gradio buttons have no tooltip option; the page turns that reason into one). The header speaks to users: one
small badge per service, then one short sentence per thing worth knowing. What an administrator needs (the
service's own reason, a setting to check) stays one click away under "Details", and in the badges' tooltips.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from studio.clients import Health
from studio.context import HealthSnapshot
from studio.words import plural
from studio.workspace import Scene, SceneObject

SERVICE_NAMES = {"llm": "LLM", "3d": "3D"}
# Badge tones (styled in `theme.py`); the cards use the same ones.
SERVICE_TONES = {"ready": "ok", "busy": "info", "loading": "warn", "down": "bad"}
# What each state means for the user, per service, as one sentence; a ready service needs none.
STATE_NOTES = {
    ("llm", "loading"): "The language model is still loading: chat opens when it is ready.",
    ("llm", "busy"): "The language model is busy: answers may take longer.",
    ("llm", "down"): "The language model is not answering: chat is unavailable until it is back.",
    ("3d", "loading"): "The 3D service is still loading: images and 3D models start when it is ready.",
    ("3d", "busy"): "The 3D service is busy: images and 3D models may take longer.",
    ("3d", "down"): "The 3D service is not answering: images and 3D models are unavailable until it is back.",
}
IMAGEGEN_OFF = "Text-to-image is off: upload an image for each object."
TEXTURE_OFF = "3D models come vertex-coloured: this installation cannot bake textures."
CUTOUT_OFF = "Use images with a transparent background: this installation cannot remove backgrounds."
DEMO_MODEL = "A small demo model is answering, so scene plans are simple and repetitive."
GPU_TURNS = "Chat answers are waiting for the GPU while a 3D step runs."


def imagegen_state(trellis: Health) -> tuple[bool, str]:
    """Whether text-to-image can draw, and why not (the 3D service reports it as one of its backends)."""
    available, why = part_state(trellis, "imagegen")
    if not available:
        return False, why
    return trellis.usable, trellis.message


def part_state(trellis: Health, part: str) -> tuple[bool, str]:
    """Whether an optional part of the 3D backend (`texture`, `background_removal`) can run, and why not. Parts the
    service does not report (the relief backend, an older service) count as available."""
    info = (trellis.details.get("backends") or {}).get(part)
    if isinstance(info, dict) and info.get("state") in ("off", "error"):
        return False, str(info.get("detail") or f"{part} is unavailable")
    return True, ""


def draw_block(trellis: Health) -> str:
    """Why images cannot be drawn now, short enough for a button label ("" when they can)."""
    if not trellis.usable:
        return f"3D service {trellis.state}"
    return "" if imagegen_state(trellis)[0] else "text-to-image off"


def draw_refusal(trellis: Health) -> str:
    """Why images cannot be drawn now, as a sentence for the user ("" when they can)."""
    if not trellis.usable:
        return STATE_NOTES[("3d", trellis.state)]
    return "" if imagegen_state(trellis)[0] else IMAGEGEN_OFF


# --- the header ------------------------------------------------------------------------------------------------
def _badge(text: str, tone: str, title: str = "", extra: str = "") -> str:
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="badge badge-{tone} {extra}"{tip}>{html.escape(text)}</span>'


def _note(text: str, title: str = "") -> str:
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<p class="note"{tip}>{html.escape(text)}</p>'


def vram_note(h: HealthSnapshot) -> str:
    """The GPU memory profile the services report and what it lowers; empty when no service runs on a GPU."""
    reports = [s.details for s in (h.llm, h.trellis) if s.details.get("vram_applies") and s.details.get("vram_profile")]
    if not reports:
        return ""
    profiles = list(dict.fromkeys(str(r["vram_profile"]) for r in reports))
    lowered = list(dict.fromkeys(str(k) for r in reports for k in r.get("vram_lowered") or []))
    reasons = "; ".join(dict.fromkeys(str(r.get("vram_reason") or "") for r in reports))
    knobs = f" · lowered: {', '.join(lowered)}" if lowered else ""
    return _badge(f"GPU profile {' / '.join(profiles)}{knobs}", "neutral", reasons, "vram")


def header_html(h: HealthSnapshot) -> str:
    services = {"llm": h.llm, "3d": h.trellis}
    badges = [
        _badge(f"{SERVICE_NAMES[k]} {s.state}", SERVICE_TONES[s.state], s.message, f"svc svc-{s.state}")
        for k, s in services.items()
    ]
    depth = h.trellis.queue_depth
    if depth and h.trellis.usable:
        badges.append(_badge(f"{plural(depth, 'job')} in the 3D queue", "neutral", "3D jobs queued or running"))
    badges.append(vram_note(h))
    notes = [_note(STATE_NOTES[(k, s.state)], s.message) for k, s in services.items() if (k, s.state) in STATE_NOTES]
    notes += _parts_note(h.trellis) + _llm_note(h.llm)
    if h.llm.details.get("waiting_for_gpu"):  # small-GPU profiles: chat waits its turn; say so rather than look stuck
        notes.append(_note(GPU_TURNS))
    details = [
        f"<p>{SERVICE_NAMES[k]}: {html.escape(s.message)}</p>" for k, s in services.items() if s.state != "ready"
    ]
    more = f'<details class="status-details"><summary>Details</summary>{"".join(details)}</details>' if details else ""
    return (
        f'<div id="status-header"><div class="status-badges">{"".join(badges)}</div>'
        f'<div class="status-notes">{"".join(notes)}{more}</div></div>'
    )


def _llm_note(llm: Health) -> list[str]:
    """What the LLM service says users should know about the model answering (the bundled demo model), in the
    studio's words; the service's own words (which model, why a fallback) are the tooltip."""
    note = str(llm.details.get("note") or "") if llm.usable else ""
    return [_note(DEMO_MODEL, note)] if note else []


def _parts_note(trellis: Health) -> list[str]:
    """What the 3D service cannot do on this installation, and what the user does instead."""
    if not trellis.usable:
        return []
    notes = []
    for part, sentence in (("imagegen", IMAGEGEN_OFF), ("texture", TEXTURE_OFF), ("background_removal", CUTOUT_OFF)):
        available, why = part_state(trellis, part)
        if not available:
            notes.append(_note(sentence, why))
    return notes


# --- what the page's actions may do ----------------------------------------------------------------------------
@dataclass
class Gates:
    """(enabled, label) for each page-level action; a disabled label ends with "(why)"."""

    send: tuple[bool, str]
    draw: tuple[bool, str]
    all3d: tuple[bool, str]
    cancel: tuple[bool, str]
    export: tuple[bool, str]


def _gate(label: str, why: str) -> tuple[bool, str]:
    return (not why, f"{label} ({why})" if why else label)


def wants_3d(obj: SceneObject) -> bool:
    """A card that *Generate all 3D* sends: it has its image and no model made or on the way."""
    return obj.image is not None and obj.state == "ready" and obj.model_state not in ("ready", "queued", "running")


def running_3d(scene: Scene | None) -> bool:
    return scene is not None and any(o.model_state in ("queued", "running") for o in scene.objects)


def all3d_block(trellis: Health, scene: Scene | None) -> str:
    """Why *Generate all 3D* has nothing to do now ("" when it has)."""
    objects = scene.objects if scene else []
    if not trellis.usable:
        return f"3D service {trellis.state}"
    if not objects:
        return "no objects yet"
    if any(wants_3d(o) for o in objects):
        return ""
    if not any(o.image is not None for o in objects):
        return "no images yet"
    return "3D running" if running_3d(scene) else "every model made"


def draw_all_block(trellis: Health, scene: Scene | None) -> str:
    """Why *Draw images* has nothing to do now ("" when it has)."""
    objects = scene.objects if scene else []
    blocked = draw_block(trellis)
    if blocked:
        return blocked
    if not objects:
        return "no objects yet"
    if any(o.image is None and o.state in ("waiting", "failed") for o in objects):
        return ""
    return "drawing" if any(o.state == "generating" for o in objects) else "all drawn"


def gates(h: HealthSnapshot, scene: Scene | None) -> Gates:
    return Gates(
        send=_gate("Send", "" if h.llm.usable else f"LLM {h.llm.state}"),
        draw=_gate("Draw images", draw_all_block(h.trellis, scene)),
        all3d=_gate("Generate all 3D", all3d_block(h.trellis, scene)),
        cancel=(running_3d(scene), "Cancel 3D"),
        export=_gate("Export scene", "" if scene and scene.objects else "no objects yet"),
    )
