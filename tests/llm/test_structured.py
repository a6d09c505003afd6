"""Unit tests of the structured-output guarantee: any token choice the mask allows ends in valid JSON in budget.

A uniformly random pick among allowed tokens is the worst case (a trained model prefers to close values), so
if that always validates within max_tokens, the served model does too.
"""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from nim_llm.errors import APIError
from nim_llm.structured import GrammarCache
from nim_llm.tiny import build_tokenizer
from nim_llm.tools import parse_tool_calls
from tests.llm.test_chat import PLAN_SCHEMA

SCHEMAS = [
    PLAN_SCHEMA,
    {"type": "object"},
    {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 2},
    {
        "type": "object",
        "properties": {
            "n": {"type": "number", "minimum": 5},
            "ok": {"type": "boolean"},
            "tag": {"type": "string", "pattern": "^[a-z]{2,4}$"},
        },
        "required": ["n", "ok", "tag"],
    },
]


@pytest.fixture(scope="module")
def grammars() -> GrammarCache:
    tokenizer = build_tokenizer()
    return GrammarCache(tokenizer, len(tokenizer), [tokenizer.eos_token_id], max_entries=8, max_close_tokens=256)


def _random_walk(
    grammars: GrammarCache, key: str, budget: int, rng: random.Random, *, fast_forward: bool = False
) -> list[int]:
    constraint = grammars.new_constraint(key)
    out: list[int] = constraint.fast_forward() if fast_forward else []
    while not constraint.done and len(out) < budget:
        token = int(rng.choice(np.flatnonzero(constraint.allowed().numpy())))
        token = constraint.commit(token, budget - len(out) - 1)
        if token in grammars.eos_ids:
            break
        out.append(token)
        if fast_forward:
            out += constraint.fast_forward()
    return out


@pytest.mark.parametrize("fast_forward", [False, True], ids=["step-by-step", "fast-forward"])
@pytest.mark.parametrize("schema", SCHEMAS, ids=["plan", "any-object", "string-array", "number-bool-pattern"])
def test_random_tokens_end_in_valid_json_when_constrained(
    grammars: GrammarCache, schema: dict, fast_forward: bool
) -> None:
    key = grammars.compile(schema, "schema")
    rng = random.Random(0)
    for _ in range(12):
        budget = grammars.min_tokens(key) + rng.choice([0, 1, 5, 20, 80])
        out = _random_walk(grammars, key, budget, rng, fast_forward=fast_forward)
        assert len(out) <= budget
        jsonschema.validate(json.loads(grammars.hf_tokenizer.decode(out)), schema)


def test_fast_forward_takes_forced_keys_at_once(grammars: GrammarCache) -> None:
    """After the opening, a fixed-order object's key is forced: it comes without sampling."""
    key = grammars.compile(SCHEMAS[0], "schema")
    constraint = grammars.new_constraint(key)
    opening = grammars.hf_tokenizer.decode(constraint.fast_forward())
    assert opening.startswith('{"scene":')


def test_compile_reuses_grammar_when_same_schema(grammars: GrammarCache) -> None:
    first = grammars.compile({"type": "object", "properties": {"a": {"type": "integer"}}}, "schema")
    again = grammars.compile({"properties": {"a": {"type": "integer"}}, "type": "object"}, "schema")
    assert first == again
    assert grammars._matchers[first] is grammars._matchers[again]


def test_compile_rejects_when_schema_invalid(grammars: GrammarCache) -> None:
    with pytest.raises(APIError) as err:
        grammars.compile({"type": "no-such-type"}, "response_format.json_schema.schema")
    assert err.value.status == 400 and err.value.param == "response_format.json_schema.schema"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', ["get_weather"]),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>', ["get_weather"]),
        (
            '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {}}]',
            ["get_time", "get_weather"],
        ),
    ],
)
def test_parse_tool_calls_returns_calls_when_text_is_a_call(text: str, names: list[str]) -> None:
    calls = parse_tool_calls(text, {"get_weather", "get_time"})
    assert calls is not None and [c.function.name for c in calls] == names
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)


@pytest.mark.parametrize(
    "text", ["Paris is sunny.", '{"name": "rm_rf", "parameters": {}}', '{"name": "get_weather", "parameters": "x"}']
)
def test_parse_tool_calls_returns_none_when_text_is_not_a_known_call(text: str) -> None:
    assert parse_tool_calls(text, {"get_weather"}) is None
