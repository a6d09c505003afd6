"""The LLM service's routes: thin, each hands its request to the service on `app.state` and shapes the answer.

`POST /tokenize` sits at the root, not under /v1, where vLLM serves it, so clients written for vLLM find it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from nim_llm import __version__
from nim_llm.protocol import ChatCompletionRequest, ModelCard, ModelList, TokenizeRequest
from nim_llm.service import LoadState
from servicekit.auth import require_api_key
from servicekit.health import health_router, ready_response

API_VERSION = "1.0.0"  # the NIM API revision whose endpoints this server implements


async def ready(request: Request) -> JSONResponse:
    model: LoadState = request.app.state.model
    facts = request.app.state.vram.health_fields()
    # On the 16gb/24gb profiles answers queue while a 3D stage has the GPU; clients see why they wait.
    facts["waiting_for_gpu"] = bool(model.engine and model.engine.waiting_for_gpu)
    facts.update(model=model.model_id, note=model.note)
    status = "ready" if model.ready else "error" if model.status == "failed" else "loading"
    return ready_response(status, model.reason, request.app.state.settings.llm_retry_after_s, **facts)


health = health_router(ready)
router = APIRouter()


@router.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    result = await request.app.state.chat.create(body, request.is_disconnected)
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/tokenize", dependencies=[Depends(require_api_key)])
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    return (await request.app.state.tokenize.tokenize(body)).model_dump()


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def list_models(request: Request) -> dict[str, Any]:
    app_state, model = request.app.state, request.app.state.model
    max_len = model.engine.max_context if model.engine else 0
    card = ModelCard(
        id=app_state.settings.llm_served_name,
        created=app_state.started,
        owned_by="nim_llm",
        root=model.model_id,
        max_model_len=max_len,
    )
    return ModelList(data=[card]).model_dump()


@router.get("/v1/version")
async def version() -> dict[str, str]:
    return {"release": __version__, "api": API_VERSION}
