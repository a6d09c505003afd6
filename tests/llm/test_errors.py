"""Every bad input gets its documented status in the OpenAI error envelope, and the server keeps serving."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.llm.conftest import SERVED, Server, ask, running_server

GOOD = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


BAD_REQUESTS = [
    pytest.param(
        {"content": b'{"model": "x", "messages": [', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
        id="malformed-json",
    ),
    pytest.param({"json": _with(temperature="hot")}, 400, "temperature", id="wrong-type-temperature"),
    pytest.param({"json": _with(messages="hello")}, 400, "messages", id="wrong-type-messages"),
    pytest.param(
        {"json": _with(messages=[{"role": "wizard", "content": "x"}])}, 400, "messages.0.role", id="unknown-role"
    ),
    pytest.param({"json": _with(messages=[])}, 400, "messages", id="empty-messages"),
    pytest.param({"json": {"messages": GOOD["messages"]}}, 400, "model", id="missing-model"),
    pytest.param({"json": _with(max_tokens=-1)}, 400, "max_tokens", id="negative-max-tokens"),
    pytest.param({"json": _with(top_logprobs=50, logprobs=True)}, 400, "top_logprobs", id="top-logprobs-too-big"),
    pytest.param({"json": _with(n=1000)}, 400, "n", id="n-too-big"),
    pytest.param({"json": _with(stop=[""])}, 400, "stop", id="empty-stop"),
    pytest.param(
        {"json": _with(messages=[{"role": "user", "content": "x" * 10_000_000}])}, 413, None, id="10mb-prompt"
    ),
    pytest.param({"json": _with(max_tokens=5000)}, 400, "max_tokens", id="over-context"),
    pytest.param(
        {"json": _with(messages=[{"role": "user", "content": "word " * 5000}])},
        400,
        "messages",
        id="prompt-over-context",
    ),
    pytest.param({"json": _with(model="gpt-4o")}, 404, "model", id="unknown-model"),
    pytest.param(
        {"json": _with(response_format={"type": "json_schema"})},
        400,
        "response_format.json_schema",
        id="json-schema-missing",
    ),
    pytest.param(
        {
            "json": _with(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            )
        },
        400,
        "tool_choice",
        id="unknown-tool-choice",
    ),
    pytest.param(
        {"json": _with(messages=[{"role": "user", "content": [{"type": "image_url"}]}])},
        400,
        "messages[0].content",
        id="image-part",
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status", "param"), BAD_REQUESTS)
def test_bad_request_gets_status_when_sent(
    tiny_server: Server, request_kwargs: dict, status: int, param: str | None
) -> None:
    r = httpx.post(f"{tiny_server.url}/chat/completions", timeout=60, **request_kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param == "invalid_json":
        assert error["code"] == "invalid_json"
    else:
        assert error["param"] == param
    if status == 400 and "context" in error["message"]:
        assert "4096" in error["message"]  # the limit is named
    good = httpx.post(f"{tiny_server.url}/chat/completions", json=GOOD, timeout=60)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] is not None


def test_stream_request_with_bad_input_gets_400_not_a_stream(tiny_server: Server) -> None:
    r = httpx.post(f"{tiny_server.url}/chat/completions", json=_with(stream=True, max_tokens=0))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_unknown_route_gets_404_envelope(tiny_server: Server) -> None:
    r = httpx.get(f"{tiny_server.url}/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_sdk_raises_typed_errors_when_bad_input(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(client, model="nope")
    with pytest.raises(openai.BadRequestError):
        ask(client, max_tokens=100_000)
    assert ask(client, max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_api_key_required_when_configured(make_settings) -> None:
    with running_server(make_settings(api_key="s3cret-key")) as server:
        with pytest.raises(openai.AuthenticationError):
            ask(server.client(api_key="wrong"), max_tokens=2)
        missing = httpx.post(f"{server.url}/chat/completions", json=GOOD)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/models").status_code == 401
        assert httpx.get(f"{server.url}/health/ready").status_code == 200
        assert ask(server.client(api_key="s3cret-key"), max_tokens=2).choices


def _ready_message(base: str, expect: str, timeout_s: float = 60) -> httpx.Response:
    """Poll /health/ready until its 503 message contains `expect` (loading first says "Loading ...")."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{base}/health/ready")
        if (r.status_code == 503 and expect in r.json()["message"]) or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_not_ready_when_model_cannot_load(make_settings, tmp_path) -> None:
    settings = make_settings(llm_model=str(tmp_path / "missing-model"), hf_hub_offline=True)
    with running_server(settings, ready=False) as server:
        assert httpx.get(f"{server.url}/health/live").status_code == 200
        ready = _ready_message(server.url, "not available")
        assert ready.status_code == 503 and "missing-model" in ready.json()["message"]
        assert ready.json()["status"] == "error"  # failed to load: waiting will not help, so no Retry-After
        r = httpx.post(f"{server.url}/chat/completions", json=GOOD)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "not available" in r.json()["error"]["message"]


def test_not_ready_says_how_to_set_token_when_gated_model_without_token(make_settings) -> None:
    with running_server(make_settings(llm_model="meta-llama/Llama-3.1-8B-Instruct"), ready=False) as server:
        ready = _ready_message(server.url, "HF_TOKEN")
        assert ready.status_code == 503
        assert "HF_TOKEN" in ready.json()["message"]


def test_fallback_model_answers_and_the_ready_body_says_why(make_settings, tmp_path) -> None:
    settings = make_settings(
        llm_model=str(tmp_path / "missing-model"), llm_fallback_model="builtin:tiny-llama", hf_hub_offline=True
    )
    with running_server(settings) as server:
        ready = httpx.get(f"{server.url}/health/ready").json()
        assert ready["status"] == "ready" and ready["model"] == "builtin:tiny-llama"
        assert "LLM_MODEL could not be loaded: " in ready["note"] and "missing-model does not exist" in ready["note"]
        assert httpx.post(f"{server.url}/chat/completions", json=GOOD).status_code == 200
