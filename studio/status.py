"""The status header and which actions are possible right now, from the services' health and the scene.

Nothing here blocks the page: an action that cannot work is disabled and its label says why (Gradio buttons have
no tooltip), and the header gives the full reason from the service's own health endpoint, and the GPU memory
profile with the quality knobs it lowers when the services run on a GPU.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from studio.clients import Health
from studio.context import HealthSnapshot
from studio.workspace import Scene

COLOURS = {"ready": "#1a7f37", "loading": "#9a6700", "down": "#cf222e"}
ICONS = {"ready": "●", "loading": "◐", "down": "○"}


def imagegen_state(trellis: Health) -> tuple[bool, str]:
    """Whether text-to-image can draw, and why not (the 3D service reports it as one of its backends)."""
    available, why = part_state(trellis, "imagegen")
    if not available:
        return False, why
    return trellis.state == "ready", trellis.message


def part_state(trellis: Health, part: str) -> tuple[bool, str]:
    """Whether an optional part of the 3D backend (`texture`, `background_removal`) can run, and why not. Parts the
    service does not report (the relief backend, an older service) count as available."""
    info = (trellis.details.get("backends") or {}).get(part)
    if isinstance(info, dict) and info.get("state") in ("off", "error"):
        return False, str(info.get("detail") or f"{part} is unavailable")
    return True, ""


def _pill(name: str, h: Health, extra: str = "") -> str:
    colour = COLOURS[h.state]
    reason = "" if h.state == "ready" else f" — {html.escape(h.message)}"
    return (
        f'<span class="svc svc-{h.state}" title="{html.escape(h.message)}" style="color:{colour};'
        f'margin-right:1.2em"><b>{ICONS[h.state]} {name}: {h.state}</b>{reason}{extra}</span>'
    )


def vram_note(h: HealthSnapshot) -> str:
    """The GPU memory profile the services report and what it lowers; empty when no service runs on a GPU."""
    reports = [s.details for s in (h.llm, h.trellis) if s.details.get("vram_applies") and s.details.get("vram_profile")]
    if not reports:
        return ""
    profiles = list(dict.fromkeys(str(r["vram_profile"]) for r in reports))
    lowered = list(dict.fromkeys(str(k) for r in reports for k in r.get("vram_lowered") or []))
    reasons = "; ".join(dict.fromkeys(str(r.get("vram_reason") or "") for r in reports))
    knobs = f" · lowered: {html.escape(', '.join(lowered))}" if lowered else ""
    return (
        f'<span class="vram" title="{html.escape(reasons)}" style="color:#57606a">'
        f"GPU profile {html.escape(' / '.join(profiles))}{knobs}</span>"
    )


def header_html(h: HealthSnapshot) -> str:
    depth = h.trellis.queue_depth
    queue = f" · queue {depth}" if depth is not None and h.trellis.state != "down" else ""
    can_draw, why = imagegen_state(h.trellis)
    note = (
        ""
        if can_draw or h.trellis.state != "ready"
        else (f' <span style="color:#9a6700">(images: {html.escape(why)}; upload your own images instead)</span>')
    )
    note += _parts_note(h.trellis) + _llm_note(h.llm)
    # Small-GPU profiles: chat answers queue while a 3D stage has the GPU; say so rather than look stuck.
    turn = " · waiting for the GPU while a 3D step runs" if h.llm.details.get("waiting_for_gpu") else ""
    pills = f"{_pill('LLM', h.llm, turn)}{_pill('3D', h.trellis, queue)}"
    return f'<div id="status-header">{pills}{note}{vram_note(h)}</div>'


def _llm_note(llm: Health) -> str:
    """What the LLM service says users should know about the model answering (the bundled demo model)."""
    note = str(llm.details.get("note") or "") if llm.state == "ready" else ""
    return f' <span class="llm-note" style="color:#9a6700">({html.escape(note)})</span>' if note else ""


def _parts_note(trellis: Health) -> str:
    """What the 3D service cannot do on this installation, and what the studio does instead."""
    if trellis.state != "ready":
        return ""
    notes = []
    texture, why = part_state(trellis, "texture")
    if not texture:
        notes.append(f"3D models are vertex-coloured: textured GLBs are unavailable ({why})")
    cutout, why = part_state(trellis, "background_removal")
    if not cutout:
        notes.append(f"3D needs images with a transparent background ({why})")
    return "".join(f' <span class="parts" style="color:#9a6700">({html.escape(n)})</span>' for n in notes)


@dataclass
class Gates:
    """(enabled, label) for each page-level action."""

    send: tuple[bool, str]
    draw: tuple[bool, str]
    all3d: tuple[bool, str]
    export: tuple[bool, str]


def gates(h: HealthSnapshot, scene: Scene | None) -> Gates:
    objects = scene.objects if scene else []
    llm_ok = h.llm.state == "ready"
    can_draw, _ = imagegen_state(h.trellis)
    waiting = any(o.image is None and o.state in ("waiting", "failed") for o in objects)
    with_image = any(o.image is not None and o.state == "ready" for o in objects)
    return Gates(
        send=(llm_ok, "Send" if llm_ok else f"Send (LLM {h.llm.state})"),
        draw=(can_draw and waiting, "Draw images" if can_draw else "Draw images (text-to-image unavailable)"),
        all3d=(
            h.trellis.state == "ready" and with_image,
            "Generate all 3D" if h.trellis.state == "ready" else f"Generate all 3D (3D {h.trellis.state})",
        ),
        export=(bool(objects), "Export scene"),
    )
