"""The 3D service's FastAPI app: the service (models load in the background, so `/v1/health/live` answers at once)
and the shared HTTP contract (servicekit: errors, API key, also on the docs, body limit, health, metrics) around its
routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from config import Settings
from nim_trellis.backends.base import Backend3D
from nim_trellis.routes import health, router
from nim_trellis.service import TrellisService
from servicekit.auth import protect_docs
from servicekit.body_limit import BodyLimit
from servicekit.errors import install_error_handlers
from servicekit.metrics import metrics_router

BODY_OVERHEAD_BYTES = 64 * 1024  # JSON fields around the base64 image


def body_limit(settings: Settings) -> int:
    """The largest body a valid request can have: the largest image, base64-encoded (4/3), plus its fields."""
    return settings.max_image_bytes * 4 // 3 + BODY_OVERHEAD_BYTES


def create_app(
    settings: Settings, *, backend: Backend3D | None = None, service: TrellisService | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or TrellisService(settings, backend=backend)
        app.state.service = svc
        app.state.metrics = svc.queue.metrics
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="chat-to-3D 3D service", version="1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=body_limit(settings), setting="MAX_IMAGE_BYTES")
    install_error_handlers(app)
    protect_docs(app)
    app.include_router(health)
    app.include_router(metrics_router)
    app.include_router(router)
    return app
