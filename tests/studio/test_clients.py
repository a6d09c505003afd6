"""Service addresses: both clients take the service's root and add every path in full, whichever way the address is
written, and a wrong address (something answering 404 on the health path) makes the header say what to fix."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from config import Settings, service_root
from studio.context import StudioContext
from studio.status import header_html
from tests.support import serve_in_thread

ADDRESS_FORMS = ["", "/", "/v1", "/v1/"]
MESSAGES = [{"role": "user", "content": "hello"}]


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
