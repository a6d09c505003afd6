"""The static-cache engine (LLM_ENGINE=static), run on CPU without compile or CUDA graphs.

The GPU path differs only in compiling and capturing `LlamaStep.forward`; its logic (slots, batched prefill,
slot moves, batched sampling) is what these tests pin down against the eager engine.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import torch

from nim_llm.loading import load_model
from nim_llm.sampling import SamplingParams, make_generator, pick_tokens
from nim_llm.sequence import Event, FinishEvent, TokenEvent
from nim_llm.slots import SlotBatch, bucket_for, buckets
from nim_llm.startup import build_engine
from tests.llm.conftest import Server, ask, running_server, with_plan
from tests.llm.test_chat import PLAN_SCHEMA


@pytest.fixture(scope="module")
def static_server(make_settings):
    with running_server(make_settings(llm_engine="static", llm_slot_tokens=512)) as server:
        yield server


def _generate(engine, prompts: list[list[int]], max_tokens: list[int]) -> list[tuple[str, int]]:
    """Submit every prompt at once (greedy); returns (text, completion tokens) per prompt."""
    texts = [""] * len(prompts)
    counts = [0] * len(prompts)
    done = [threading.Event() for _ in prompts]

    def sink_for(i: int):
        def sink(event: Event) -> None:
            if isinstance(event, TokenEvent):
                texts[i] += event.text
            elif isinstance(event, FinishEvent):
                counts[i] = event.completion_tokens
                done[i].set()
            else:
                done[i].set()

        return sink

    for i, (prompt, budget) in enumerate(zip(prompts, max_tokens, strict=True)):
        engine.submit(prompt, SamplingParams(max_tokens=budget, temperature=0.0), sink_for(i))
    assert all(d.wait(60) for d in done)
    return list(zip(texts, counts, strict=True))


def _generate_each(engines: list, prompts: list[list[int]], max_tokens: list[int]) -> list[list[tuple[str, int]]]:
    """`_generate` on each engine in turn, each started for it and stopped after."""
    results = []
    for engine in engines:
        engine.start()
        try:
            results.append(_generate(engine, prompts, max_tokens))
        finally:
            engine.stop()
    return results


def test_static_engine_matches_eager_when_greedy_and_sequences_come_and_go(make_settings) -> None:
    eager = build_engine(*with_plan(make_settings(llm_engine="eager")))
    static = build_engine(*with_plan(make_settings(llm_engine="static", llm_slot_tokens=256, llm_max_batch_size=4)))
    assert isinstance(static._batch, SlotBatch) and static.max_context == 256
    tokenizer = eager.tokenizer
    words = ["a chair", "a much longer prompt about chairs, tables and a lamp", "hi", "the rug is red", "ok"]
    prompts = [tokenizer.encode(w) for w in words * 2]
    budgets = [5, 30, 12, 40, 3, 25, 8, 17, 33, 2]  # finish at different steps, so slots move
    results = _generate_each([eager, static], prompts, budgets)
    assert results[1] == results[0]
    assert sum(count for _, count in results[1]) > 20 and len({text for text, _ in results[1]}) > 3


def test_buckets_cover_limit_when_not_a_power_of_two() -> None:
    assert buckets(1, 6) == [1, 2, 4, 6]
    assert buckets(256, 256) == [256]
    assert bucket_for(5, [1, 2, 4, 8]) == 8


def test_pick_tokens_matches_argmax_and_keeps_seeds_apart() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    eos = torch.tensor([7])
    greedy = pick_tokens(logits, [SamplingParams(max_tokens=1, temperature=0.0)] * 3, [None] * 3, eos)
    assert greedy == logits.argmax(-1).tolist()
    params = [SamplingParams(max_tokens=1, temperature=1.0, top_p=0.9, ignore_eos=True)] * 3

    def draw(seeds: list[int]) -> list[int]:
        return pick_tokens(logits, params, [make_generator(s, logits.device) for s in seeds], eos)

    assert draw([1, 2, 3]) == draw([1, 2, 3])
    assert 7 not in draw([4, 5, 6]) + draw([8, 9, 10])


def test_static_server_keeps_contracts_when_structured_stop_logprobs(static_server: Server) -> None:
    client = static_server.client()
    r = ask(
        client,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN_SCHEMA}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), PLAN_SCHEMA)
    assert r.choices[0].finish_reason == "stop"
    same = {ask(client, max_tokens=16, seed=3).choices[0].message.content for _ in range(2)}
    assert len(same) == 1
    lp = ask(client, max_tokens=6, logprobs=True, top_logprobs=2)
    assert len(lp.choices[0].logprobs.content) == lp.usage.completion_tokens
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda s: ask(client, max_tokens=20, seed=s).choices[0], range(6)))
    assert all(c.finish_reason in ("stop", "length") for c in results)


def test_static_engine_refuses_model_it_cannot_serve(make_settings, monkeypatch) -> None:
    loaded = load_model(*with_plan(make_settings()))
    monkeypatch.setattr(loaded.model.config, "model_type", "gpt2")
    from nim_llm.startup import engine_kind

    with pytest.raises(RuntimeError, match="cannot serve"):
        engine_kind(make_settings(llm_engine="static"), loaded.model)
    assert engine_kind(make_settings(llm_engine="auto"), loaded.model) == "eager"
    monkeypatch.setattr(loaded.model.config, "model_type", "llama")
    assert engine_kind(make_settings(llm_engine="static"), loaded.model) == "static"
    monkeypatch.setattr(loaded.model.config, "quantization_config", {"load_in_4bit": True}, raising=False)
    with pytest.raises(RuntimeError, match="quantized"):
        engine_kind(make_settings(llm_engine="static"), loaded.model)
