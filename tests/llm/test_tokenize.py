"""`POST /tokenize` (vLLM's shape, at the root) through real HTTP: its count is the chat request's prompt_tokens."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.llm.conftest import SERVED, Server, running_server

CONVERSATION = [
    {"role": "system", "content": "You plan 3D scenes."},
    {"role": "user", "content": "a cozy reading corner"},
    {"role": "assistant", "content": "Here is a plan with an armchair and a lamp."},
    {"role": "user", "content": [{"type": "text", "text": "add a "}, {"type": "text", "text": "bookshelf"}]},
]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "place", "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
]


def root(server: Server) -> str:
    return server.url.removesuffix("/v1")


def tokenize(server: Server, **body: Any) -> httpx.Response:
    return httpx.post(f"{root(server)}/tokenize", json={"model": SERVED, **body}, timeout=60)


@pytest.mark.parametrize(
    ("messages", "extra"),
    [
        pytest.param([{"role": "user", "content": "Hello there!"}], {}, id="one-message"),
        pytest.param(CONVERSATION, {}, id="conversation-with-parts"),
        pytest.param(CONVERSATION, {"tools": TOOLS, "tool_choice": "auto"}, id="with-tools"),
    ],
)
def test_count_equals_prompt_tokens_when_same_messages(
    tiny_server: Server, client: openai.OpenAI, messages: list[dict], extra: dict
) -> None:
    r = tokenize(tiny_server, messages=messages, add_generation_prompt=True, **extra)
    assert r.status_code == 200, r.text
    body = r.json()
    chat = client.chat.completions.create(model=SERVED, messages=messages, max_tokens=1, seed=1, **extra)
    assert body["count"] == chat.usage.prompt_tokens
    assert body["count"] == len(body["tokens"]) and all(isinstance(t, int) for t in body["tokens"])


def test_max_model_len_matches_models_list(tiny_server: Server) -> None:
    body = tokenize(tiny_server, messages=[{"role": "user", "content": "hi"}]).json()
    models = httpx.get(f"{tiny_server.url}/models").json()["data"]
    assert body["max_model_len"] == models[0]["max_model_len"] > 0


def test_generation_prompt_adds_tokens_when_asked(tiny_server: Server) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with_prompt = tokenize(tiny_server, messages=messages).json()  # vLLM's default: add_generation_prompt true
    without = tokenize(tiny_server, messages=messages, add_generation_prompt=False).json()
    assert with_prompt["count"] > without["count"]
    assert with_prompt["tokens"][: without["count"]] == without["tokens"]


def test_prompt_is_tokenized_as_plain_text(tiny_server: Server) -> None:
    text = "A wooden chair and a round table."
    body = tokenize(tiny_server, prompt=text).json()
    tokenizer = tiny_server.app.state.model.engine.tokenizer
    assert body["tokens"] == tokenizer(text)["input_ids"] and body["count"] == len(body["tokens"])
    assert tokenizer.decode(body["tokens"], skip_special_tokens=True) == text


def test_model_may_be_left_out(tiny_server: Server) -> None:
    r = httpx.post(f"{root(tiny_server)}/tokenize", json={"prompt": "hi"})
    assert r.status_code == 200 and r.json()["count"] >= 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        pytest.param({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 400, None, id="both"),
        pytest.param({}, 400, None, id="neither"),
        pytest.param({"messages": []}, 400, "messages", id="empty-messages"),
        pytest.param({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", id="unknown-role"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, None, id="image"),
        pytest.param({"prompt": "hi", "model": "gpt-4o"}, 404, "model", id="unknown-model"),
    ],
)
def test_bad_request_gets_openai_envelope(tiny_server: Server, body: dict, status: int, param: str | None) -> None:
    r = httpx.post(f"{root(tiny_server)}/tokenize", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param


def test_api_key_required_when_configured(make_settings) -> None:
    with running_server(make_settings(api_key="s3cret-key")) as server:
        body = {"model": SERVED, "prompt": "hi"}
        missing = httpx.post(f"{root(server)}/tokenize", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        good = httpx.post(f"{root(server)}/tokenize", json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert good.status_code == 200


def test_not_ready_gets_503_with_retry_after(make_settings, tmp_path) -> None:
    settings = make_settings(llm_model=str(tmp_path / "missing-model"), hf_hub_offline=True)
    with running_server(settings, ready=False) as server:
        r = httpx.post(f"{root(server)}/tokenize", json={"model": SERVED, "prompt": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "model_not_ready"
