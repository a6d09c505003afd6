"""Service addresses: both clients take the service's root and add every path in full, whichever way the address is
written, and a wrong address (something answering 404 on the health path) makes the header say what to fix. A
streamed answer waits for a service that is still starting as other calls do, and is never asked for twice once
text arrived."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from config import Settings, service_root
from studio.clients import ServiceError
from studio.context import StudioContext
from studio.status import header_html
from tests.studio.fakes import fake_llm
from tests.support import free_port, serve_in_thread

ADDRESS_FORMS = ["", "/", "/v1", "/v1/"]
MESSAGES = [{"role": "user", "content": "hello"}]
START_DELAY_S = 1.0  # how long a starting service keeps the studio waiting: within the default retries' back-off
ACCEPT_POLL_S = 0.05  # how often the dropping listener looks whether it should stop


def header_text(ctx: StudioContext) -> str:
    """The status header as the user reads it: tags dropped, entities decoded."""

    async def run() -> str:
        return header_html(await ctx.health())

    return html.unescape(re.sub(r"<[^>]+>", "", asyncio.run(run())))


def test_service_root_drops_trailing_v1() -> None:
    assert service_root("http://h:1/v1") == service_root("http://h:1/v1/") == "http://h:1"
    assert service_root("http://h:1/llm") == "http://h:1/llm"


@pytest.mark.parametrize("suffix", ADDRESS_FORMS, ids=["root", "slash", "v1", "v1-slash"])
def test_clients_add_full_paths_to_the_root(make_ctx: Any, services: Any, suffix: str) -> None:
    llm, trellis, llm_state, trellis_state = services
    llm_state.update(models_context=True, context=100_000)  # /tokenize answers 404: the counter asks /v1/models
    ctx = make_ctx(llm_base_url=llm + suffix, trellis_base_url=trellis + suffix)

    async def run() -> tuple[str, str, str, bool, int]:
        llm_client, trellis_client = ctx.services.llm, ctx.services.trellis
        answer = "".join([d async for d in llm_client.stream_chat(MESSAGES, max_tokens=16)])
        flagged = await trellis_client.moderate("a chair")
        images = await trellis_client.generate_images("a chair", n=1, seed=3, size=64)
        return llm_client.root, trellis_client.root, answer, flagged, len(images)

    assert asyncio.run(run()) == (llm, trellis, "Hello there!", False, 1)
    assert len(llm_state["tokenize_log"]) == len(llm_state["models_log"]) == len(llm_state["log"]) == 1
    assert len(trellis_state["log"]) == 1
    assert "LLM ready" in header_text(ctx) and "3D ready" in header_text(ctx)


@pytest.fixture(scope="module")
def not_our_service() -> Any:
    """Some other HTTP server: every path answers 404."""
    with serve_in_thread(FastAPI()) as url:
        yield url


def test_wrong_address_says_what_to_fix(not_our_service: str, tmp_path: Path) -> None:
    url = not_our_service
    settings = Settings(_env_file=None, llm_base_url=url + "/v1", trellis_base_url=url, data_dir=tmp_path)  # type: ignore[call-arg]
    text = header_text(StudioContext.from_settings(settings))
    assert (
        f"LLM: {url} answered 404 for /v1/health/ready: is LLM_BASE_URL the LLM service's address "
        "(http://host:port, with or without /v1)?"
    ) in text
    assert (
        f"3D: {url} answered 404 for /v1/health/ready: is TRELLIS_BASE_URL the 3D service's address "
        "(http://host:port, with or without /v1)?"
    ) in text


def test_a_path_prefix_is_named_in_the_hint(not_our_service: str, tmp_path: Path) -> None:
    url = not_our_service + "/llm/v1"
    settings = Settings(_env_file=None, llm_base_url=url, data_dir=tmp_path)  # type: ignore[call-arg]
    text = header_text(StudioContext.from_settings(settings))
    assert "LLM down" in text
    assert f"LLM: {not_our_service}/llm answered 404 for /v1/health/ready: is LLM_BASE_URL" in text


def test_another_openai_server_without_our_health_route_counts_as_ready(tmp_path: Path) -> None:
    """vLLM serves `/health`, hosted APIs none: a server that lists its models at /v1/models can serve the studio."""
    other = FastAPI()

    @other.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "meta/llama-3.1-8b-instruct", "object": "model"}]}

    with serve_in_thread(other) as url:
        settings = Settings(_env_file=None, llm_base_url=url, data_dir=tmp_path)  # type: ignore[call-arg]
        ctx = StudioContext.from_settings(settings)
        health = asyncio.run(ctx.health()).llm
        assert "LLM ready" in header_text(ctx)
    assert health.state == "ready" and "/v1/models answers" in health.message


# --- a streamed answer from a service that is still starting -----------------------------------------------------
def drop_connections(port: int, listening: threading.Event, stop: threading.Event) -> None:
    """Accept every connection on `port` and close it unanswered (what a proxy in front of a service that is not
    listening yet does) for START_DELAY_S, or until `stop`."""
    with socket.create_server(("127.0.0.1", port)) as server:  # SO_REUSEADDR: the service binds the port next
        server.settimeout(ACCEPT_POLL_S)
        listening.set()
        until = time.monotonic() + START_DELAY_S
        while time.monotonic() < until and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = server.accept()
                connection.close()


@contextlib.contextmanager
def llm_starting_late(port: int, *, before: str) -> Iterator[None]:
    """The fake LLM on `port`, listening only START_DELAY_S from now; until then a connection is refused (`before`
    "refused") or accepted and dropped unanswered ("dropped")."""
    listening, stop = threading.Event(), threading.Event()

    def run() -> None:
        if before == "dropped":
            drop_connections(port, listening, stop)
        else:
            listening.set()
            stop.wait(START_DELAY_S)
        if not stop.is_set():
            with serve_in_thread(fake_llm({"plans": []}), port=port):
                stop.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    listening.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def llm_at(port: int, tmp_path: Path, **overrides: Any) -> StudioContext:
    settings = Settings(_env_file=None, llm_base_url=f"http://127.0.0.1:{port}", data_dir=tmp_path, **overrides)  # type: ignore[call-arg]
    return StudioContext.from_settings(settings)


async def streamed(ctx: StudioContext, deltas: list[str]) -> None:
    """A streamed chat answer, its deltas collected into `deltas` as they arrive."""
    async for delta in ctx.services.llm.stream_chat(MESSAGES, max_tokens=16):
        deltas.append(delta)


@pytest.mark.parametrize("before", ["refused", "dropped"])
def test_streamed_chat_waits_for_a_service_that_is_starting(tmp_path: Path, before: str) -> None:
    port = free_port()
    ctx = llm_at(port, tmp_path)  # the default UI_HTTP_RETRIES
    deltas: list[str] = []
    with llm_starting_late(port, before=before):
        asyncio.run(streamed(ctx, deltas))
    assert "".join(deltas) == "Hello there!"


@pytest.mark.parametrize("before", ["refused", "dropped"])
def test_streamed_chat_without_retries_says_the_service_is_unreachable(tmp_path: Path, before: str) -> None:
    port = free_port()
    ctx = llm_at(port, tmp_path, ui_http_retries=0)
    with llm_starting_late(port, before=before), pytest.raises(ServiceError) as caught:
        asyncio.run(streamed(ctx, []))
    assert caught.value.message == f"The LLM service is not reachable at http://127.0.0.1:{port}; is it running?"


def dies_after_first_chunk(log: list[int]) -> FastAPI:
    """An LLM service whose answer breaks off after its first chunk (the connection is cut mid-answer)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        log.append(1)

        async def sse() -> AsyncIterator[str]:
            yield 'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
            raise RuntimeError("the service went away mid-answer")

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


def test_streamed_chat_is_not_asked_again_once_text_arrived(tmp_path: Path) -> None:
    """Asking again after a delta would repeat the text already shown."""
    log: list[int] = []
    deltas: list[str] = []
    with serve_in_thread(dies_after_first_chunk(log)) as url:
        ctx = StudioContext.from_settings(Settings(_env_file=None, llm_base_url=url, data_dir=tmp_path))  # type: ignore[call-arg]
        with pytest.raises(ServiceError, match="not reachable"):
            asyncio.run(streamed(ctx, deltas))
    assert deltas == ["Hel"] and log == [1]
