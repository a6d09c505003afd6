"""The header passes on what the LLM service says about the model answering (the bundled demo model)."""

from __future__ import annotations

from studio.clients import Health
from studio.context import HealthSnapshot
from studio.status import header_html

READY_3D = Health("ready", "ready", 0, {})


def test_header_shows_the_llm_services_note_when_ready() -> None:
    note = "The bundled SmolLM2-135M is answering: demo quality, so scene plans are simple and repetitive."
    llm = Health("ready", "Service is ready.", None, {"note": note})
    assert note in header_html(HealthSnapshot(llm, READY_3D))
    assert "demo quality" not in header_html(HealthSnapshot(Health("ready", "ok", None, {}), READY_3D))
