"""FastAPI app of the 3D service: thin routers over `TrellisService`.

Endpoints: `POST /v1/infer` (TRELLIS NIM), `/v1/jobs` (async jobs), `POST /v1/images/generations` (OpenAI Images),
`POST /v1/moderations` (OpenAI Moderations), `GET /v1/health/live|ready`, `GET /v1/metrics` (Prometheus).
Errors use one envelope, `{"error": {"message", "type", "param", "code"}}`; invalid requests get 400.
Health and metrics are open (probes and scrapers); everything else needs `Authorization: Bearer <API_KEY>`
when API_KEY is set.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from config import Settings
from nim_trellis.backends.base import Backend3D
from nim_trellis.errors import ServiceError, error_body
from nim_trellis.schemas import (
    HealthResponse,
    ImageGenerationRequest,
    ImageGenerationResponse,
    InferRequest,
    InferResponse,
    JobCreated,
    JobStatus,
    ModerationRequest,
    ModerationResponse,
)
from nim_trellis.service import TrellisService

log = logging.getLogger("nim_trellis.api")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
FILE_MEDIA_TYPES = {"model/gltf-binary", "model/stl", "application/octet-stream"}


def service_of(request: Request) -> TrellisService:
    return request.app.state.service


def check_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), key.get_secret_value()):
        raise ServiceError(
            401, "Missing or wrong API key; send `Authorization: Bearer <API_KEY>`.", code="invalid_api_key"
        )


health = APIRouter(prefix="/v1")
api = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])


@health.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@health.get("/health/ready", response_model=HealthResponse)
async def ready(request: Request) -> JSONResponse:
    body = service_of(request).health()
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@health.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(service_of(request).queue.metrics.render(), media_type=PROMETHEUS_TEXT)


@api.post("/infer", response_model=InferResponse)
async def infer(body: InferRequest, request: Request) -> Response:
    result = await service_of(request).infer(body, request.is_disconnected)
    if not wants_file(request.headers.get("accept", "")):
        body = await asyncio.to_thread(lambda: result.response().model_dump())  # base64 of a large file takes a while
        return JSONResponse(body)
    if result.artifact is None:  # a client that asked for the file gets the refusal as an error
        raise ServiceError(400, f"The input was refused: {result.detail}", code="content_filtered", param="image")
    a = result.artifact
    headers = {"X-Seed": str(a.seed), "X-Backend": a.backend, "X-Finish-Reason": result.finish_reason}
    return Response(a.data, media_type=a.media_type, headers=headers)


def wants_file(accept: str) -> bool:
    """Extension to the NIM contract: `Accept: model/gltf-binary` (or model/stl, application/octet-stream) returns
    the file itself instead of base64 inside JSON, a third smaller and without decoding on either side."""
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & FILE_MEDIA_TYPES) and "application/json" not in kinds


@api.post("/jobs", status_code=202, response_model=JobCreated)
async def create_job(body: InferRequest, request: Request) -> JobCreated:
    svc = service_of(request)
    job = await svc.submit_3d(body)
    return JobCreated(id=job.id, status=job.status, queue_position=svc.queue.position(job))


@api.get("/jobs/{job_id}", response_model=JobStatus)
async def job_status(job_id: str, request: Request) -> JobStatus:
    q = service_of(request).queue
    return q.status(q.get(job_id))


@api.get("/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request) -> FileResponse:
    job = service_of(request).queue.get(job_id)
    if job.status != "succeeded" or job.result_path is None:
        raise ServiceError(
            409,
            f"Job {job_id} is {job.status}; a result exists only once it has succeeded.",
            code="job_not_finished",
            param="id",
        )
    if not job.result_path.exists():
        raise ServiceError(404, f"The result of job {job_id} has expired.", code="job_not_found", param="id")
    headers = {"X-Seed": str(job.seed), "X-Backend": job.backend}
    return FileResponse(
        job.result_path, media_type=job.media_type, headers=headers, filename=f"{job.id}.{job.output_format}"
    )


@api.delete("/jobs/{job_id}", response_model=JobStatus)
async def cancel_job(job_id: str, request: Request) -> JobStatus:
    q = service_of(request).queue
    return q.status(q.cancel(job_id))


@api.post("/images/generations", response_model=ImageGenerationResponse)
async def generate_images(body: ImageGenerationRequest, request: Request) -> ImageGenerationResponse:
    return await service_of(request).generate_images(body, request.is_disconnected)


@api.post("/moderations", response_model=ModerationResponse)
async def moderations(body: ModerationRequest, request: Request) -> ModerationResponse:
    return await service_of(request).moderate(body)


def _error_response(err: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
    return JSONResponse(error_body(err), status_code=err.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors: list[dict[str, Any]] = list(exc.errors())
    if not errors:
        return "The request body is not valid.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    got = first.get("input")
    shown = f" (got {got!r})" if param and not isinstance(got, dict | list) and len(repr(got)) < 80 else ""
    return (f"`{param}`: {msg}{shown}." if param else f"{msg}."), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(ServiceError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(ServiceError(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(ServiceError(500, f"Internal error: {type(exc).__name__}", code="internal_error"))


BODY_OVERHEAD_BYTES = 64 * 1024  # JSON fields around the base64 image


class BodyLimit:
    """413 before parsing when Content-Length is larger than the biggest allowed image could make a body.

    A pure ASGI middleware: Starlette's BaseHTTPMiddleware would wrap `receive` and hide client disconnects from
    `request.is_disconnected()`, which the waiting endpoints rely on.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_image_bytes * 4 // 3 + BODY_OVERHEAD_BYTES  # base64 grows data by 4/3

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = _error_response(
                    ServiceError(
                        413,
                        f"The request body is {int(length)} bytes; the limit is {self.limit} (from MAX_IMAGE_BYTES).",
                        code="body_too_large",
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings, *, backend: Backend3D | None = None, service: TrellisService | None = None
) -> FastAPI:
    """The app; models load in a background thread at start-up, so `/v1/health/live` answers at once."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or TrellisService(settings, backend=backend)
        app.state.service = svc
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="chat-to-3D 3D service", version="1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit, settings=settings)
    app.include_router(health)
    app.include_router(api)
    return app
