"""The FastAPI app: start-up (model loading off the event loop), middleware, error rendering, thin routers.

`/v1/health/live` answers as soon as the process serves HTTP; `/v1/health/ready` stays 503 with the reason
until the model is loaded and a warm-up generation succeeded (or says why loading failed, e.g. no HF_TOKEN).
The GPU memory plan (`servicekit/vram.py`) caps batch size and context before loading and is reported by the ready body.
`POST /tokenize` sits at the root, not under /v1, where vLLM serves it, so clients written for vLLM find it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from config import Settings
from nim_llm import __version__
from nim_llm.engine import Engine
from nim_llm.errors import APIError, bad_request, internal, not_ready, too_large, unauthorized
from nim_llm.metrics import CONTENT_TYPE, Metrics
from nim_llm.protocol import ChatCompletionRequest, ModelCard, ModelList, TokenizeRequest
from nim_llm.serving import ChatService, ModelState
from nim_llm.startup import start_model
from nim_llm.tokenizing import TokenizeService
from servicekit.vram import llm_plan

log = logging.getLogger("nim_llm.api")
API_VERSION = "1.0.0"  # the NIM API revision whose endpoints this server implements


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The LLM service. With `engine` given (tests, embedding) it is warmed up and served instead of loading."""
    vram = llm_plan(settings)
    settings = vram.limit_llm(settings)
    state = ModelState(model_id=str(settings.llm_model))
    metrics = Metrics(
        lambda: state.engine.running if state.engine else 0, lambda: state.engine.waiting if state.engine else 0
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(
            target=start_model, args=(settings, state, engine), name="nim-llm-loader", daemon=True
        )
        loader.start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="nim_llm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model = state
    app.state.metrics = metrics
    app.state.vram = vram
    app.state.chat = ChatService(settings, state, metrics)
    app.state.tokenize = TokenizeService(settings, state)
    app.state.started = int(time.time())
    app.add_middleware(BodyLimitMiddleware, limit=settings.llm_max_request_bytes)
    _add_error_handlers(app)
    app.include_router(router)
    return app


# --- routers --------------------------------------------------------------------------------------------
def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    expected = f"Bearer {key.get_secret_value()}"
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise unauthorized()


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


@router.get("/v1/health/live")
async def health_live() -> dict[str, str]:
    return {"object": "health.response", "message": "Service is live."}


@router.get("/v1/health/ready")
async def health_ready(request: Request) -> Response:
    model: ModelState = request.app.state.model
    if not model.ready:
        raise not_ready(model.reason, request.app.state.settings.llm_retry_after_s)
    body = {"object": "health.response", "message": "Service is ready.", **request.app.state.vram.health_fields()}
    # On the 16gb/24gb profiles answers queue while a 3D stage has the GPU; clients see why they wait.
    body["waiting_for_gpu"] = bool(model.engine and model.engine.waiting_for_gpu)
    return JSONResponse(body)


@router.get("/v1/metrics")
async def prometheus_metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/version")
async def version() -> dict[str, str]:
    return {"release": __version__, "api": API_VERSION}


# --- errors ---------------------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> Response:
        return err.to_response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> Response:
        return validation_to_api_error(err).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> Response:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return APIError(err.status_code, str(err.detail), type=kind).to_response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> Response:
        log.exception("unhandled error")
        return internal(f"Internal error: {type(err).__name__}").to_response()


def validation_to_api_error(err: RequestValidationError) -> APIError:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return bad_request(f"The body is not valid JSON: {detail}", code="invalid_json")
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{first.get('msg')}", param=param, code="invalid_value")


# --- middleware -----------------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413 before anything parses them (with or without Content-Length)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await too_large(self.limit).to_response()(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await too_large(self.limit).to_response()(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
