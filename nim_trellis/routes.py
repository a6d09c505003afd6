"""The 3D service's routes, thin: each hands its request to `TrellisService` (on `app.state.service`) and shapes
the answer. `POST /v1/infer` (TRELLIS NIM), `/v1/jobs` (async jobs), `POST /v1/images/generations` (OpenAI Images),
`POST /v1/moderations` (OpenAI Moderations); health and metrics come from servicekit. Everything but health and
metrics needs `Authorization: Bearer <API_KEY>` when API_KEY is set.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from nim_trellis.protocol import (
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
from servicekit.auth import require_api_key
from servicekit.errors import APIError
from servicekit.health import health_router, ready_response

FILE_MEDIA_TYPES = {"model/gltf-binary", "model/stl", "application/octet-stream"}


def service_of(request: Request) -> TrellisService:
    return request.app.state.service


async def ready(request: Request) -> JSONResponse:
    body = await asyncio.to_thread(service_of(request).health)  # it may touch the disk (the storage check)
    facts = body.model_dump(exclude={"status", "message"} | ({"workers"} if body.workers is None else set()))
    return ready_response(body.status, body.message, request.app.state.settings.trellis_retry_after_s, **facts)


health = health_router(ready)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/infer", response_model=InferResponse)
async def infer(body: InferRequest, request: Request) -> Response:
    result = await service_of(request).infer(body, request.is_disconnected)
    if not wants_file(request.headers.get("accept", "")):
        answer = await asyncio.to_thread(lambda: result.response().model_dump())  # base64 of a large file
        return JSONResponse(answer)
    if result.artifact is None:  # a client that asked for the file gets the refusal as an error
        raise APIError(400, f"The input was refused: {result.detail}", code="content_filtered", param="image")
    a = result.artifact
    headers = {"X-Seed": str(a.seed), "X-Backend": a.backend, "X-Finish-Reason": result.finish_reason}
    return Response(a.data, media_type=a.media_type, headers=headers)


def wants_file(accept: str) -> bool:
    """Extension to the NIM contract: `Accept: model/gltf-binary` (or model/stl, application/octet-stream) returns
    the file itself instead of base64 inside JSON, a quarter smaller and without decoding on either side."""
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & FILE_MEDIA_TYPES) and "application/json" not in kinds


@router.post("/jobs", status_code=202, response_model=JobCreated)
async def create_job(body: InferRequest, request: Request) -> JobCreated:
    return await service_of(request).create_job(body)


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def job_status(job_id: str, request: Request) -> JobStatus:
    return service_of(request).job_status(job_id)


@router.get("/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request) -> FileResponse:
    result = service_of(request).job_result(job_id)
    return FileResponse(result.path, media_type=result.media_type, headers=result.headers, filename=result.filename)


@router.delete("/jobs/{job_id}", response_model=JobStatus)
async def cancel_job(job_id: str, request: Request) -> JobStatus:
    return service_of(request).cancel_job(job_id)


@router.post("/images/generations", response_model=ImageGenerationResponse)
async def generate_images(body: ImageGenerationRequest, request: Request) -> ImageGenerationResponse:
    return await service_of(request).images.generate_images(body, request.is_disconnected)


@router.post("/moderations", response_model=ModerationResponse)
async def moderations(body: ModerationRequest, request: Request) -> ModerationResponse:
    return await service_of(request).images.moderate(body)
