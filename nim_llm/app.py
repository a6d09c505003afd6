"""The LLM service's FastAPI app: the GPU memory plan (once), model loading off the event loop, and the shared
HTTP contract (servicekit: errors, API key, body limit, health, metrics) around this service's routes.

`/v1/health/live` answers as soon as the process serves HTTP; `/v1/health/ready` stays 503 with the reason
until the model is loaded and a warm-up generation succeeded (or says why loading failed, e.g. no HF_TOKEN).
The GPU memory plan (`servicekit/vram.py`) sizes the engine and is reported by the ready body.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from config import Settings
from nim_llm import __version__
from nim_llm.engine import Engine
from nim_llm.metrics import Metrics
from nim_llm.routes import health, router
from nim_llm.service import ChatService, LoadState
from nim_llm.startup import start_model
from nim_llm.tokenizing import TokenizeService
from servicekit.auth import protect_docs
from servicekit.body_limit import BodyLimit
from servicekit.errors import install_error_handlers
from servicekit.metrics import metrics_router
from servicekit.vram import VramPlan, llm_plan


def create_app(settings: Settings, engine: Engine | None = None, plan: VramPlan | None = None) -> FastAPI:
    """The LLM service. With `engine` given (tests, embedding) it is warmed up and served instead of loading."""
    plan = plan or llm_plan(settings)  # the one place this process decides it
    state = LoadState(model_id=str(settings.llm_model))
    metrics = Metrics(
        lambda: state.engine.running if state.engine else 0, lambda: state.engine.waiting if state.engine else 0
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(
            target=start_model, args=(settings, plan, state, engine), name="nim-llm-loader", daemon=True
        )
        loader.start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="nim_llm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model = state
    app.state.metrics = metrics
    app.state.vram = plan
    app.state.chat = ChatService(settings, state, metrics)
    app.state.tokenize = TokenizeService(settings, state)
    app.state.started = int(time.time())
    app.add_middleware(BodyLimit, limit=settings.llm_max_request_bytes, setting="LLM_MAX_REQUEST_BYTES")
    install_error_handlers(app, on_error=lambda _: metrics.observe_request(0, "internal_error"))
    protect_docs(app)
    app.include_router(health)
    app.include_router(metrics_router)
    app.include_router(router)
    return app
