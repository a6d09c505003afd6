"""`GET /v1/metrics` for both services: the Prometheus text of the registry at `app.state.metrics` (open, like
health, so scrapers need no key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

metrics_router = APIRouter(prefix="/v1")


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
