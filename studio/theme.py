"""The studio's look: a Gradio theme of its own and the page's stylesheet (both go to `launch()` in Gradio 6).

Fonts come with Gradio itself (served by the app from its own static files) or from the system, never from a
font service: the studio must look the same offline. State is shown with small rounded badges whose dot is a CSS
shape, so nothing depends on an emoji font.
"""

from __future__ import annotations

import gradio as gr
from gradio.themes.utils import colors, fonts, sizes

# Palette.
INK = "#1d2433"
MUTED = "#5d6678"
PAGE = "#f4f5f8"
PANEL = "#ffffff"
BORDER = "#e2e5ec"
EDGE = "#c9ced9"  # dashed outline of the empty board
ACCENT = "#4338ca"
ACCENT_HOVER = "#3730a3"
ACCENT_SOFT = "#eef0fd"
# Badge tones: (text, background, border). `status.py` and `board_view.py` name them.
TONES = {
    "ok": ("#176639", "#e8f5ed", "#c5e6d1"),
    "info": ("#2b47b9", "#ebeffd", "#cdd7f8"),
    "warn": ("#8a5300", "#fff5e0", "#f5dfae"),
    "bad": ("#b3261e", "#fdeceb", "#f5c9c5"),
    "neutral": ("#475067", "#eff1f5", "#dde1e8"),
}
FONT = (fonts.LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif")
FONT_MONO = (fonts.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace")


class StudioTheme(gr.themes.Base):
    """Gradio's base theme in the studio's colours: a light grey page, white panels, one indigo accent."""

    def __init__(self) -> None:
        super().__init__(
            primary_hue=colors.indigo,
            secondary_hue=colors.slate,
            neutral_hue=colors.slate,
            radius_size=sizes.radius_md,
            text_size=sizes.text_md,
            font=FONT,
            font_mono=FONT_MONO,
        )
        self.name = "chat3d-studio"
        super().set(
            body_background_fill=PAGE,
            body_text_color=INK,
            body_text_color_subdued=MUTED,
            background_fill_primary=PANEL,
            background_fill_secondary=PAGE,
            block_background_fill=PANEL,
            block_border_color=BORDER,
            block_border_width="1px",
            block_radius="12px",
            block_shadow="0 1px 2px rgba(16, 24, 40, 0.04)",
            block_label_text_color=MUTED,
            block_title_text_weight="600",
            border_color_primary=BORDER,
            input_background_fill=PANEL,
            input_border_color=BORDER,
            input_radius="8px",
            button_border_width="1px",
            button_large_radius="8px",
            button_small_radius="8px",
            button_primary_background_fill=ACCENT,
            button_primary_background_fill_hover=ACCENT_HOVER,
            button_primary_border_color=ACCENT,
            button_primary_text_color="#ffffff",
            button_secondary_background_fill=PANEL,
            button_secondary_background_fill_hover=ACCENT_SOFT,
            button_secondary_border_color=BORDER,
            button_secondary_text_color=INK,
            button_cancel_background_fill=TONES["bad"][1],
            button_cancel_background_fill_hover=TONES["bad"][2],
            button_cancel_border_color=TONES["bad"][2],
            button_cancel_text_color=TONES["bad"][0],
            slider_color=ACCENT,
            checkbox_background_color_selected=ACCENT,
            color_accent=ACCENT,
            color_accent_soft=ACCENT_SOFT,
        )


def _tone_rules() -> str:
    return "\n".join(
        f".badge-{name} {{ color: {text}; background: {fill}; border-color: {edge}; }}"
        for name, (text, fill, edge) in TONES.items()
    )


CSS = (
    """
.gradio-container { max-width: 1480px !important; }
footer { display: none !important; }

/* top bar: the name on the left, the service badges on the right */
#topbar { align-items: center; gap: 16px; padding: 4px 0 8px; border-bottom: 1px solid %(border)s; }
#topbar > * { border: 0 !important; box-shadow: none !important; background: transparent !important; }
#brand { display: flex; align-items: center; gap: 10px; }
#brand h1 { font-size: 20px; font-weight: 600; margin: 0; letter-spacing: -0.01em; color: %(ink)s; }
#brand .mark { width: 26px; height: 26px; border-radius: 7px; background: linear-gradient(135deg, %(accent)s, #7c83f0);
  box-shadow: inset 0 0 0 5px rgba(255, 255, 255, 0.25); }
#status-header { display: flex; flex-direction: column; align-items: flex-end; gap: 4px; }
.status-badges { display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 6px; }
.status-notes { display: flex; flex-direction: column; align-items: flex-end; gap: 2px; }
.status-notes .note { margin: 0; font-size: 13px; color: %(muted)s; }
.status-details { font-size: 12px; color: %(muted)s; text-align: right; }
.status-details summary { cursor: pointer; }
.status-details p { margin: 2px 0; }

/* badges: small pills with a dot drawn in CSS */
.badge { display: inline-flex; align-items: center; gap: 6px; padding: 1px 10px; border: 1px solid;
  border-radius: 999px; font-size: 12px; font-weight: 600; line-height: 20px; white-space: nowrap; }
.badge::before { content: ""; width: 7px; height: 7px; border-radius: 50%%; background: currentColor; flex: none; }
.badge-info::before { animation: chat3d-pulse 1.2s ease-in-out infinite; }
.badge-neutral::before { opacity: 0.5; }
@keyframes chat3d-pulse { 50%% { opacity: 0.25; } }
"""
    + _tone_rules()
    + """

/* the toolbar above the board: the scene's name and progress, then the page's actions */
#toolbar { align-items: center; gap: 8px; flex-wrap: nowrap; }
#toolbar > button { flex: 0 0 auto !important; min-width: 0 !important; }
#board-title { flex: 1 1 auto !important; min-width: 0 !important; }
.scene-title { display: flex; flex-direction: column; }
.scene-name { font-size: 18px; font-weight: 600; color: %(ink)s; }
.scene-meta { font-size: 13px; color: %(muted)s; white-space: nowrap; }

/* an empty board says what to do; the board and preview appear with the first card */
#board-empty .empty-board { border: 1.5px dashed %(edge)s; border-radius: 12px; padding: 40px 24px;
  text-align: center; color: %(muted)s; background: %(panel)s; }
#board-empty .empty-title { font-size: 17px; font-weight: 600; color: %(ink)s; margin: 0 0 6px; }
#board-empty .empty-board p { margin: 0 auto; max-width: 520px; }
#board-column:has(#board > .card) #board-empty { display: none !important; }
#board-column:not(:has(#board > .card)) :is(#board, #preview-panel) { display: none !important; }

/* the board: a grid of cards */
#board { display: grid !important; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px;
  background: transparent; border: 0; box-shadow: none; padding: 0; }
#board > .card { min-width: 0 !important; width: auto !important; }
.card { background: %(panel)s; border: 1px solid %(border)s !important; border-radius: 12px !important;
  padding: 12px !important; gap: 8px !important; box-shadow: 0 1px 3px rgba(16, 24, 40, 0.06); }
.card > * { border: 0 !important; box-shadow: none !important; }
.card.card-3d-ready { border-color: %(ok_edge)s !important; }
.card.card-failed, .card.card-filtered { border-color: %(bad_edge)s !important; }
.card .card-header { padding: 0 !important; min-height: 0 !important; }
.card-head { display: flex; align-items: baseline; gap: 6px; }
.card-name { font-weight: 600; font-size: 15px; color: %(ink)s; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.card-count { font-size: 13px; color: %(muted)s; }
.card-state { display: flex; align-items: center; gap: 8px; margin-top: 4px; min-height: 24px; }
.card-meta { font-size: 12px; color: %(muted)s; margin-top: 2px; }
.card-note { font-size: 12px; margin: 6px 0 0; padding: 6px 8px; border-radius: 8px; }
.card-note-note { background: %(warn_fill)s; color: %(warn_text)s; }
.card-note-bad { background: %(bad_fill)s; color: %(bad_text)s; }
.progress { height: 6px; margin: 6px 0 2px; border-radius: 999px; background: %(page)s; overflow: hidden; }
.progress > span { display: block; height: 100%%; border-radius: 999px; background: %(accent)s;
  transition: width 0.4s ease; }
.card .card-thumb { border-radius: 10px; overflow: hidden; background: %(page)s; }
.card-actions { gap: 6px !important; }
.card-actions button { min-width: 0 !important; }
.card-edit { background: transparent !important; padding: 8px 0 0 !important; border-radius: 0 !important;
  border-top: 1px solid %(border)s !important; }

/* the preview: large, under a slim bar with the object to show and the download */
#preview-panel { background: %(panel)s; border: 1px solid %(border)s; border-radius: 12px; padding: 12px; gap: 12px; }
#preview-bar { align-items: center; gap: 12px; flex-wrap: nowrap !important; }
#preview-bar > #preview-title, #preview-bar > button { flex: 0 0 auto !important; width: auto !important;
  min-width: 0 !important; }
#preview-choice { flex: 1 1 auto !important; }
.preview-title { font-size: 16px; font-weight: 600; color: %(ink)s; }
"""
) % {
    "ink": INK,
    "muted": MUTED,
    "page": PAGE,
    "panel": PANEL,
    "border": BORDER,
    "edge": EDGE,
    "accent": ACCENT,
    "ok_edge": TONES["ok"][2],
    "bad_edge": TONES["bad"][2],
    "bad_fill": TONES["bad"][1],
    "bad_text": TONES["bad"][0],
    "warn_fill": TONES["warn"][1],
    "warn_text": TONES["warn"][0],
}


def studio_theme() -> gr.themes.Base:
    return StudioTheme()
