"""Entry point of the studio UI: builds the page from `studio/` and serves it with Gradio.

The UI holds no model and never imports torch; it talks to the LLM and 3D services over HTTP. Analytics and run
history are off, files are served only from the data dir, and basic auth is on when UI_AUTH_USER is set.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import time. The page then makes no external request.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")

import gradio as gr

from config import Settings, get_settings
from studio.context import StudioContext
from studio.theme import CSS, studio_theme
from studio.ui import TITLE, TOOLTIP_JS, build_ui


def create_app(settings: Settings) -> gr.Blocks:
    """The queued page; the queue is bounded so a flood of clicks gets a clear 'queue full' instead of a hang."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    demo = build_ui(StudioContext.from_settings(settings))
    # Cheap events (open, delete, export) may run side by side; GPU-bound ones are capped by their shared group.
    demo.queue(max_size=settings.ui_queue_size, default_concurrency_limit=None)
    return demo


def launch_kwargs(settings: Settings) -> dict[str, object]:
    auth = None
    if settings.ui_auth_user and settings.ui_auth_password is not None:
        auth = (settings.ui_auth_user, settings.ui_auth_password.get_secret_value())
    return {
        "server_name": settings.gradio_server_name,
        "server_port": settings.gradio_server_port,
        "allowed_paths": [str(settings.data_dir.resolve())],
        "auth": auth,
        "auth_message": f"{TITLE}: please sign in." if auth else None,
        "run_history": False,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "theme": studio_theme(),
        "css": CSS,
        "js": TOOLTIP_JS,
    }


def main() -> None:
    settings = get_settings()
    create_app(settings).launch(**launch_kwargs(settings))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
