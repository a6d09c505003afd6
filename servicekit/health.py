"""One health contract for both services, the paths supervisord, Docker, compose and Kubernetes probe.

`GET /v1/health/live`: the process serves HTTP (always 200). `GET /v1/health/ready`: 200 only when the models are
loaded and warmed up, else 503 (with `Retry-After` while loading). Both answer the same shape,
`{"object": "health.response", "status", "message", ...}`; each service adds its own facts to the ready body.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

ReadyState = Literal["ready", "loading", "error"]


class HealthBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # each service's own facts (backends, GPU plan, queue depth)

    object: Literal["health.response"] = "health.response"
    status: Literal["live", "ready", "loading", "error"]
    message: str


def ready_response(status: ReadyState, message: str, retry_after_s: int, **facts: Any) -> JSONResponse:
    body = HealthBody(status=status, message=message, **facts).model_dump()
    headers = {"Retry-After": str(retry_after_s)} if status == "loading" else None
    return JSONResponse(body, status_code=200 if status == "ready" else 503, headers=headers)


def health_router(ready: Any) -> APIRouter:
    """Live and ready routes; `ready(request)` returns the service's ready JSONResponse (see `ready_response`)."""
    router = APIRouter(prefix="/v1")

    @router.get("/health/live", response_model=HealthBody)
    async def live() -> dict[str, Any]:
        return HealthBody(status="live", message="Service is live.").model_dump()

    @router.get("/health/ready", response_model=HealthBody)
    async def ready_route(request: Request) -> JSONResponse:
        return await ready(request)

    return router
