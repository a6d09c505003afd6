"""Chat completions through real HTTP with the official openai SDK, against the tiny random model."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.llm.conftest import SERVED, Server, ask

PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "scene": {"type": "string"},
        "mood": {"enum": ["calm", "busy"]},
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                    "position": {"type": "array", "items": {"type": "number"}},
                },
                "required": ["name", "count", "position"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["scene", "mood", "objects"],
    "additionalProperties": False,
}


def test_create_returns_completion_when_not_streaming(client: openai.OpenAI) -> None:
    r = ask(client, max_tokens=12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == SERVED and r.system_fingerprint
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_create_returns_same_text_when_same_seed(client: openai.OpenAI) -> None:
    texts = {ask(client, max_tokens=16, seed=11).choices[0].message.content for _ in range(2)}
    other = ask(client, max_tokens=16, seed=12).choices[0].message.content
    assert len(texts) == 1
    assert other not in texts


def test_stream_joins_to_same_text_when_same_seed(client: openai.OpenAI) -> None:
    full = ask(client, max_tokens=20, seed=5)
    chunks = list(ask(client, max_tokens=20, seed=5, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stream_sends_usage_chunk_when_include_usage(client: openai.OpenAI) -> None:
    chunks = list(ask(client, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done_line_when_read_raw(tiny_server: Server) -> None:
    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{tiny_server.url}/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_stop_removes_stop_text_when_stop_given(client: openai.OpenAI) -> None:
    text = ask(client, max_tokens=40, seed=3, temperature=1.0).choices[0].message.content
    assert len(text) > 12
    stop = text[8:11]
    cut = text.index(stop)
    r = ask(client, max_tokens=40, seed=3, temperature=1.0, stop=[stop, "never-there"])
    assert r.choices[0].message.content == text[:cut]
    assert r.choices[0].finish_reason == "stop"
    streamed = list(ask(client, max_tokens=40, seed=3, temperature=1.0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:cut]


def test_max_tokens_gives_finish_length_when_budget_reached(client: openai.OpenAI) -> None:
    r = ask(client, max_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    r = ask(client, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


@pytest.mark.parametrize("max_tokens", [40, 200])
def test_json_schema_output_validates_when_model_is_random(client: openai.OpenAI, max_tokens: int) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA, "strict": True}}
    for seed in range(4):
        r = ask(client, "Plan a kitchen.", max_tokens=max_tokens, seed=seed, response_format=fmt)
        value = json.loads(r.choices[0].message.content)
        jsonschema.validate(value, PLAN_SCHEMA)
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens <= max_tokens


def test_json_object_output_parses_when_requested(client: openai.OpenAI) -> None:
    for seed in range(3):
        r = ask(client, max_tokens=30, seed=seed, temperature=1.5, response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_stream_joins_to_valid_json_when_streaming(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA}}
    chunks = list(ask(client, max_tokens=60, seed=9, response_format=fmt, stream=True))
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), PLAN_SCHEMA)


def test_json_schema_rejected_when_max_tokens_too_small(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA}}
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, max_tokens=3, response_format=fmt)
    assert err.value.body["param"] == "max_tokens"


def test_n_returns_distinct_choices_when_n_is_3(client: openai.OpenAI) -> None:
    r = ask(client, max_tokens=10, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3
    assert r.usage.completion_tokens == 30


def test_logprobs_returned_when_requested(client: openai.OpenAI) -> None:
    r = ask(client, max_tokens=5, logprobs=True, top_logprobs=3, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        # Greedy decoding picks the most likely token, so it is the first of the top list.
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)


def test_tool_call_returned_when_tool_choice_required(client: openai.OpenAI) -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": params}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    ]
    r = ask(
        client,
        "Weather in Paris?",
        max_tokens=60,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), params)
    chunks = list(ask(client, "Time?", max_tokens=60, tools=tools, tool_choice="required", stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name in ("get_weather", "get_time")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_models_lists_served_name(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [SERVED]


def test_service_endpoints_answer_when_ready(tiny_server: Server) -> None:
    assert httpx.get(f"{tiny_server.url}/health/live").status_code == 200
    assert httpx.get(f"{tiny_server.url}/health/ready").status_code == 200
    assert httpx.get(f"{tiny_server.url}/version").json()["release"]
    before = tiny_server.metric("request_success_total")
    tokens = tiny_server.metric("generation_tokens_total")
    ask(tiny_server.client(), max_tokens=3)
    assert tiny_server.metric("request_success_total") == before + 1
    assert tiny_server.metric("generation_tokens_total") == tokens + 3
    text = httpx.get(f"{tiny_server.url}/metrics").text
    for name in (
        "num_requests_running",
        "num_requests_waiting",
        "time_to_first_token_seconds_bucket",
        "time_per_output_token_seconds_bucket",
        "prompt_tokens_total",
        "request_failure_total",
    ):
        assert name in text
