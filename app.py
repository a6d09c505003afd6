"""Entry point of the studio UI: builds the page from `studio/` and serves it with Gradio.

The UI holds no model and never imports torch; it talks to the LLM and 3D services over HTTP. Analytics and run
history are off, and Gradio serves only the folders of scenes the studio has shown (`studio/access.py`). A login is
on when UI_AUTH_USER is set, with a delay after each wrong attempt, and required where the studio would otherwise
be open with API_KEY or beyond localhost: the process then exits saying what to set.
"""

from __future__ import annotations

import os
import sys

# Before gradio is imported: it reads these at import time. The page then makes no external request.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")

import gradio as gr

from config import Settings, get_settings
from studio.access import LoginGuard, ServedFiles, exposure_problem
from studio.context import StudioContext
from studio.theme import CSS, studio_theme
from studio.ui import TITLE, TOOLTIP_JS, build_ui


def create_app(settings: Settings, ctx: StudioContext | None = None) -> gr.Blocks:
    """The queued page; the queue is bounded so a flood of clicks gets a clear 'queue full' instead of a hang."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    demo = build_ui(ctx or StudioContext.from_settings(settings))
    # Cheap events (open, delete, export) may run side by side; GPU-bound ones are capped by their shared group.
    demo.queue(max_size=settings.ui_queue_size, default_concurrency_limit=None)
    return demo


def launch_kwargs(settings: Settings, served: ServedFiles) -> dict[str, object]:
    """`served`: the context's list of scene folders the page may show (Gradio's allowed_paths, grown at run time)."""
    auth = None
    if settings.ui_auth_user and settings.ui_auth_password is not None:
        password = settings.ui_auth_password.get_secret_value()
        auth = LoginGuard(settings.ui_auth_user, password, settings.ui_login_failure_delay_s).check
    return {
        "server_name": settings.gradio_server_name,
        "server_port": settings.gradio_server_port,
        "allowed_paths": served,
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
    problem = exposure_problem(settings)
    if problem:
        print(f"studio: {problem}", file=sys.stderr)
        raise SystemExit(2)
    ctx = StudioContext.from_settings(settings)
    create_app(settings, ctx).launch(**launch_kwargs(settings, ctx.served))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
