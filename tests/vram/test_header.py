"""The UI header shows the GPU memory profile and the knobs it lowers, only when a service runs on a GPU."""

from __future__ import annotations

from servicekit.vram import PLANS, resolve_plan
from studio.clients import Health
from studio.context import HealthSnapshot
from studio.status import header_html


def test_header_shows_profile_and_lowered_knobs() -> None:
    details = resolve_plan("16gb", "cuda").health_fields()
    html = header_html(HealthSnapshot(Health("ready", "ok", None, details), Health("ready", "ok", 0, details)))
    assert "GPU profile 16gb" in html and "4-bit LLM" in html and "texture 512" in html
    assert html.count("4-bit LLM") == 1  # both services report it; shown once
    assert 'title="VRAM_PROFILE=16gb"' in html


def test_header_shows_unlimited_profile_without_knobs() -> None:
    details = PLANS["unlimited"].health_fields()
    html = header_html(HealthSnapshot(Health("loading", "warming up"), Health("ready", "ok", 0, details)))
    assert "GPU profile unlimited" in html and "lowered" not in html


def test_header_hides_profile_on_cpu() -> None:
    details = resolve_plan("auto", "cpu").health_fields()
    html = header_html(HealthSnapshot(Health("ready", "ok", None, details), Health("ready", "ok", 0, details)))
    assert "GPU profile" not in html


def test_header_says_when_chat_waits_for_the_gpu() -> None:
    details = resolve_plan("16gb", "cuda").health_fields()
    waiting = header_html(
        HealthSnapshot(
            Health("ready", "ok", None, {**details, "waiting_for_gpu": True}), Health("ready", "ok", 1, details)
        )
    )
    idle = header_html(
        HealthSnapshot(
            Health("ready", "ok", None, {**details, "waiting_for_gpu": False}), Health("ready", "ok", 0, details)
        )
    )
    assert "waiting for the GPU" in waiting and "waiting for the GPU" not in idle
