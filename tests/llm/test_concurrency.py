"""Batching, cancellation and back-pressure, through real HTTP."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

from tests.llm.conftest import SERVED, Server, ask, running_server
from tests.llm.test_chat import PLAN_SCHEMA


def _wait_for(condition, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return False


def test_stream_completes_all_when_16_concurrent(tiny_server: Server) -> None:
    client = tiny_server.client()
    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tiny_server.metric("num_requests_running"))
            time.sleep(0.01)

    def one(seed: int) -> tuple[str, str | None]:
        chunks = list(ask(client, max_tokens=60, seed=seed, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(16)))
    finally:
        stop.set()
        watcher.join()
    assert len(results) == 16 and all(reason in ("stop", "length") for _, reason in results)
    assert len({text for text, _ in results}) == 16
    # The scheduler decoded several of them in one batch rather than one after another.
    assert peak[0] >= 2


def test_batched_output_matches_alone_when_greedy(tiny_server: Server) -> None:
    client = tiny_server.client()
    prompts = ["a", "a much longer prompt about chairs and tables", "hello"]
    alone = [ask(client, p, max_tokens=40, temperature=0).choices[0].message.content for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        together = list(
            pool.map(lambda p: ask(client, p, max_tokens=40, temperature=0).choices[0].message.content, prompts)
        )
    assert together == alone


def test_free_text_matches_alone_when_batched_with_fast_forwarded_json(tiny_server: Server) -> None:
    """A json_schema answer feeds several forced tokens in one step; the free-text rows batched with it (padded
    inside that step) must decode exactly as they do alone."""
    client = tiny_server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA, "strict": True}}
    prompts = ["a", "hello there, a longer prompt"]
    alone = [ask(client, p, max_tokens=40, temperature=0).choices[0].message.content for p in prompts]

    def plan(seed: int) -> str:
        return ask(client, "Plan a kitchen.", max_tokens=120, seed=seed, response_format=fmt).choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        plans = [pool.submit(plan, seed) for seed in (1, 2)]
        together = list(
            pool.map(lambda p: ask(client, p, max_tokens=40, temperature=0).choices[0].message.content, prompts)
        )
    assert together == alone
    for future in plans:
        jsonschema.validate(json.loads(future.result()), PLAN_SCHEMA)


def test_json_answer_takes_fewer_model_steps_than_tokens(tiny_server: Server) -> None:
    """Keys and punctuation a schema forces are fed to the model together, not one step each."""
    engine = tiny_server.app.state.model.engine
    model = engine.model
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA, "strict": True}}
        r = ask(tiny_server.client(), "Plan a kitchen.", max_tokens=120, seed=3, response_format=fmt)
    finally:
        hook.remove()
    jsonschema.validate(json.loads(r.choices[0].message.content), PLAN_SCHEMA)
    assert calls[0] < r.usage.completion_tokens


@pytest.fixture(scope="module")
def single_slot_server(make_settings):
    settings = make_settings(llm_max_batch_size=1, llm_max_queue=1)
    with running_server(settings) as server:
        yield server


def _open_long_stream(server: Server):
    body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 4000,
        "stream": True,
        "ignore_eos": True,
    }
    client = httpx.Client(timeout=60)
    response = client.send(client.build_request("POST", f"{server.url}/chat/completions", json=body), stream=True)
    data = (line for line in response.iter_lines() if line.startswith("data: "))
    # The role chunk comes first; the next one carries generated text, so the sequence is running.
    assert '"role":"assistant"' in next(data)
    assert '"content"' in next(data)
    # Keep the line iterator alive: dropping it would close the response (and so cancel the generation).
    return client, response, data


def test_closed_stream_frees_slot_when_client_disconnects(single_slot_server: Server) -> None:
    engine = single_slot_server.app.state.model.engine
    client, response, _lines = _open_long_stream(single_slot_server)
    seq = engine._batch.seqs[0]
    response.close()
    client.close()
    assert _wait_for(lambda: single_slot_server.metric("num_requests_running") == 0, timeout_s=5)
    assert seq.cancelled and len(seq.output_ids) < 4000
    r = ask(single_slot_server.client(timeout=10), max_tokens=4)
    assert r.choices[0].finish_reason == "length"


def test_queue_full_returns_429_when_limit_reached(single_slot_server: Server) -> None:
    client, response, _lines = _open_long_stream(single_slot_server)
    waiting: list = []
    second = threading.Thread(target=lambda: waiting.append(ask(single_slot_server.client(timeout=120), max_tokens=3)))
    second.start()
    try:
        assert _wait_for(lambda: single_slot_server.metric("num_requests_waiting") == 1)
        body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        third = httpx.post(f"{single_slot_server.url}/chat/completions", json=body)
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["code"] == "queue_full"
    finally:
        response.close()
        client.close()
        second.join(timeout=30)
    assert waiting and waiting[0].choices[0].finish_reason == "length"


def test_client_timeout_frees_slot_when_not_streaming(single_slot_server: Server) -> None:
    body = {"model": SERVED, "messages": [{"role": "user", "content": "go"}], "max_tokens": 4000, "ignore_eos": True}
    engine = single_slot_server.app.state.model.engine
    gone_before = single_slot_server.metric('request_failure_total{reason="client_disconnected"}')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{single_slot_server.url}/chat/completions", json=body, timeout=1.0)
    assert _wait_for(lambda: engine.running == 0 and engine.waiting == 0, timeout_s=5)
    gone = single_slot_server.metric('request_failure_total{reason="client_disconnected"}')
    assert gone == gone_before + 1
