"""Small fake services with the real contracts, for fast tests of the studio's logic (the slow tests use the real
services). Each keeps a log of what it was asked, and can be told to fail."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from typing import Any

import trimesh
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

PLAN = {
    "scene": "Reading corner",
    "objects": [
        {"name": "Armchair", "prompt": "a green velvet armchair", "size_cm": [80, 90, 100], "pos_cm": [0, 0]},
        {"name": "Floor lamp", "prompt": "a brass floor lamp", "size_cm": [40, 40, 160], "pos_cm": [100, 0]},
    ],
}
NO_EDIT = {"remove": [], "add": [], "change": []}  # an edit answer that changes nothing


def edit(*, remove: list[str] | None = None, add: list[dict[str, Any]] | None = None) -> str:
    """An edit answer in the planner's wire format."""
    return json.dumps({**NO_EDIT, "remove": remove or [], "add": add or []})


def error(status: int, message: str, code: str | None = None, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        {"error": {"message": message, "type": "error", "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


def fake_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake LLM's token count: about four bytes a token, plus a few per message (as a template adds)."""
    return sum(len(str(m.get("content") or "").encode()) // 4 + 4 for m in messages) + 8


def fake_llm(state: dict[str, Any]) -> FastAPI:
    """`state`: plans (list of JSON texts answered in turn), busy (count of 503s to send first), log, not_ours (no
    NIM health route, as on vLLM or a hosted API).

    Budget options (all off by default: a server that neither counts tokens nor reports its context): `context`
    (enforced like nim_llm: 400 `context_length_exceeded` when prompt + max_tokens is over it), `tokenize`
    (serve `POST /tokenize`), `models_context` (report `max_model_len` in `/v1/models`); `tokenize_log` and
    `models_log` record those calls. Streams: `chunk_chars` a chunk, `chunk_delay_s` between chunks, `stall_s`
    before chunk number `stall_at` (default 0: before the first one).
    """
    app = FastAPI()

    @app.get("/v1/health/ready")
    def ready() -> Any:
        if state.get("not_ours"):  # another OpenAI-compatible server (vLLM, a hosted API): no NIM health route
            return error(404, "Not Found")
        return {"status": "ready", "message": "ready"}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        body = await request.json()
        state.setdefault("tokenize_log", []).append(body)
        if not state.get("tokenize"):
            return error(404, "Not Found")
        count = fake_prompt_tokens(body["messages"])
        return {"count": count, "max_model_len": state.get("context") or 0, "tokens": list(range(count))}

    @app.get("/v1/models")
    def models() -> Any:
        state.setdefault("models_log", []).append(1)
        card = {"id": "other-model", "object": "model", "created": 0, "owned_by": "fake"}
        served = {"id": "meta/llama-3.1-8b-instruct", "object": "model", "created": 0, "owned_by": "fake"}
        if state.get("models_context"):
            card["max_model_len"], served["max_model_len"] = 1, state.get("context")
        return {"object": "list", "data": [card, served]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        state.setdefault("log", []).append(body)
        if state.get("busy", 0) > 0:
            state["busy"] -= 1
            return error(503, "model is loading", retry_after=0)
        context, prompt = state.get("context"), fake_prompt_tokens(body["messages"])
        if context and prompt + (body.get("max_tokens") or 1) > context:
            return error(400, f"prompt plus max_tokens is over the context of {context}", "context_length_exceeded")
        if "response_format" in body:
            name = body["response_format"]["json_schema"]["name"]
            content = '{"intent": "chat"}' if name == "intent" else state["plans"].pop(0)
        else:
            content = "Hello there!"
        if not body.get("stream"):
            message = {"role": "assistant", "content": content}
            return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return StreamingResponse(_sse(content, state), media_type="text/event-stream")

    return app


async def _sse(content: str, state: dict[str, Any]) -> Any:
    size = state.get("chunk_chars", 5)
    for i, part in enumerate(content[j : j + size] for j in range(0, len(content), size)):
        if i == state.get("stall_at", 0):
            await asyncio.sleep(state.get("stall_s", 0))
        if i:
            await asyncio.sleep(state.get("chunk_delay_s", 0))
        yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": part}}]}) + "\n\n"
    yield "data: [DONE]\n\n"


IMAGEGEN_OFF = "text-to-image is off (no IMAGEGEN_MODEL)"


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (32, 32), (seed % 255, 100, 150, 255)).save(buf, format="PNG")
    return buf.getvalue()


def fake_trellis(state: dict[str, Any]) -> FastAPI:
    """`state`: flag (words that get prompts filtered), job_polls (polls before a job finishes), log, imagegen_off
    (text-to-image refuses, and health says it is off), health_delay_s (a slow health check). Optional makers of
    what it sends: `draw(prompt, seed) -> PNG bytes`, `model(job body) -> GLB bytes`."""
    app = FastAPI()
    jobs: dict[str, dict[str, Any]] = {}

    @app.get("/v1/health/ready")
    async def ready() -> Any:
        await asyncio.sleep(state.get("health_delay_s", 0))
        imagegen = {"state": "off", "detail": IMAGEGEN_OFF} if state.get("imagegen_off") else {"state": "ready"}
        return {
            "status": "ready",
            "message": "ready",
            "queue_depth": sum(j["status"] in ("queued", "running") for j in jobs.values()),
            "profile": "fake",
            "backends": {"imagegen": {"detail": "ok", **imagegen}},
        }

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Any:
        text = (await request.json())["input"]
        return {"id": "m", "model": "fake", "results": [{"flagged": any(w in text for w in state.get("flag", []))}]}

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Any:
        body = await request.json()
        state.setdefault("log", []).append(body)
        if state.get("imagegen_off"):
            return error(503, IMAGEGEN_OFF, "imagegen_off", retry_after=5)
        if any(w in body["prompt"] for w in state.get("flag", [])):
            return error(400, "the prompt was flagged by the safety classifier", "content_filtered")
        seeds = [body["seed"] + i for i in range(body["n"])]
        draw = state.get("draw") or (lambda prompt, seed: _png(seed))
        return {
            "created": int(time.time()),
            "backend": "fake",
            "data": [{"b64_json": base64.b64encode(draw(body["prompt"], s)).decode(), "seed": s} for s in seeds],
        }

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> Any:
        body = await request.json()
        job_id = f"job-{len(jobs) + 1}"
        jobs[job_id] = {
            "id": job_id,
            "status": "queued",
            "stage": "",
            "progress": 0.0,
            "queue_position": 0,
            "error": None,
            "seed": body.get("seed") or 99,
            "backend": "fake",
            "output_format": "glb",
            "polls": 0,
            "body": body,
        }
        return JSONResponse({"id": job_id, "status": "queued", "queue_position": 0}, status_code=202)

    @app.get("/v1/jobs/{job_id}")
    def status(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            return error(404, "no such job")
        job["polls"] += 1
        if job["status"] in ("queued", "running"):
            done = job["polls"] >= state.get("job_polls", 2)
            job.update(status="succeeded" if done else "running", stage="sampling", progress=1.0 if done else 0.5)
        return {k: v for k, v in job.items() if k not in ("polls", "body")}

    @app.get("/v1/jobs/{job_id}/result")
    def result(job_id: str) -> Any:
        model = state.get("model")
        glb = model(jobs[job_id]["body"]) if model else trimesh.Scene(trimesh.creation.box()).export(file_type="glb")
        return Response(
            glb, media_type="model/gltf-binary", headers={"X-Seed": str(jobs[job_id]["seed"]), "X-Backend": "fake"}
        )

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str) -> Any:
        jobs[job_id]["status"] = "cancelled"
        return {k: v for k, v in jobs[job_id].items() if k not in ("polls", "body")}

    state["_jobs"] = jobs
    return app
