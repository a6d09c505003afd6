"""Answer budgets: every LLM call asks for min(wanted, context - prompt tokens), whatever the server tells about
itself, drops old history before giving up, and streams so a slow but steady answer is never cut off (fast, fakes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from config import Settings
from studio.budget import Count, estimate_prompt_tokens, models_context, without_oldest_turn
from studio.chat import chat_turn
from studio.clients import PromptTooLong, Services
from studio.context import StudioContext
from studio.planner import plan_messages, plan_min_tokens
from studio.workspace import ChatRecord, SceneObject
from tests.studio.fakes import PLAN, fake_prompt_tokens
from tests.studio.test_flow import run_turn, user


def calls(services: Any, name: str | None = None) -> list[dict[str, Any]]:
    """Chat-completion bodies the fake LLM got; `name`: only json_schema calls of that name (None: only chat)."""
    log = services[2]["log"]
    if name is None:
        return [b for b in log if "response_format" not in b]
    return [b for b in log if b.get("response_format", {}).get("json_schema", {}).get("name") == name]


ANSWER_SCHEMA = {  # a tiny json_schema call
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def turns(ctx: StudioContext, texts: list[str], mode: str = "plan") -> list[str]:
    """Several turns on one event loop (so on one LLM client); the last reply of each."""

    async def run() -> list[str]:
        out = []
        for text in texts:
            replies = [step.reply async for step in chat_turn(ctx, None, user(text), mode)]
            out.append(replies[-1])
        return out

    return asyncio.run(run())


# --- pure parts -------------------------------------------------------------------------------------------------
def test_without_oldest_turn_keeps_system_and_users_message() -> None:
    sys_, u1, a1, u2, a2, last = (
        {"role": r, "content": str(i)}
        for i, r in enumerate(["system", "user", "assistant", "user", "assistant", "user"])
    )
    assert without_oldest_turn([sys_, u1, a1, u2, a2, last]) == [sys_, u2, a2, last]
    assert without_oldest_turn([sys_, a1, a2, u2, last]) == [sys_, u2, last]  # never starts with a reply
    assert without_oldest_turn([sys_, u2, a2, last]) == [sys_, last]
    assert without_oldest_turn([sys_, last]) is None and without_oldest_turn([last]) is None


def test_models_context_takes_the_served_entry_else_the_first() -> None:
    body = {"data": [{"id": "a", "max_model_len": 1000}, {"id": "served", "max_model_len": 8192}]}
    assert models_context(body, "served") == 8192
    assert models_context(body, "unknown") == 1000
    assert models_context({"data": [{"id": "served"}]}, "served") is None
    assert models_context({"data": [{"id": "served", "max_model_len": 0}]}, "served") is None
    assert models_context({"object": "list"}, "served") is None


@pytest.mark.parametrize(
    "text",
    ["a cozy reading corner", "naïve café ☕ — 読書コーナー 📚🛋️", "\x00\x01 " * 50, '{"x_cm": -3000}' * 20],
    ids=["ascii", "multibyte", "control", "json"],
)
def test_estimate_is_an_upper_bound_for_a_byte_level_tokenizer(text: str) -> None:
    from nim_llm.tiny import build_tokenizer  # byte-level BPE with a Llama-3-style chat template

    tokenizer = build_tokenizer()
    current = [SceneObject(id="obj-00000001", name=text[:32] or "x", prompt=text[:120] or "x")]
    messages = plan_messages(text, max_objects=20, current=current, earlier=[text, text])
    real = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert len(real["input_ids"]) <= estimate_prompt_tokens(messages)


# --- through the studio's chat turn -----------------------------------------------------------------------------
def test_plan_asks_for_the_room_left_when_the_server_counts(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], tokenize=True, context=1500)
    ctx = make_ctx()
    _, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert scene is not None and scene.objects
    (plan,) = calls(services, "scene_plan")
    room = 1500 - fake_prompt_tokens(plan["messages"])
    assert room < ctx.settings.ui_plan_max_tokens and plan["max_tokens"] == room
    assert services[2]["tokenize_log"][-1]["messages"] == plan["messages"]
    assert plan["stream"] is True  # streamed: a long plan is not cut off by the UI's timeout


def test_plan_asks_for_the_setting_when_the_room_is_larger(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], tokenize=True, context=100_000)
    ctx = make_ctx()
    asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert calls(services, "scene_plan")[0]["max_tokens"] == ctx.settings.ui_plan_max_tokens


def test_chat_calls_are_fitted_too(make_ctx: Any, services: Any) -> None:
    services[2].update(tokenize=True, context=400)
    ctx = make_ctx()
    turns(ctx, ["hello", "hmm"], mode="ask")
    chats = calls(services)
    assert len(chats) == 2 and calls(services, "scene_plan") == []
    for body in chats:
        assert body["max_tokens"] == min(ctx.settings.ui_chat_max_tokens, 400 - fake_prompt_tokens(body["messages"]))


def test_estimate_and_models_context_used_when_the_server_cannot_count(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)] * 2, models_context=True, context=3000)
    ctx = make_ctx()
    replies = turns(ctx, ["a cozy reading corner", "a pirate ship deck"])
    assert all("Here is a plan" in r for r in replies)
    for plan in calls(services, "scene_plan"):
        assert plan["max_tokens"] == min(
            ctx.settings.ui_plan_max_tokens, 3000 - estimate_prompt_tokens(plan["messages"])
        )
    # Which way works is remembered: /tokenize (absent) and /v1/models were asked once for both turns.
    assert len(services[2]["tokenize_log"]) == 1 and len(services[2]["models_log"]) == 1


def test_the_server_is_asked_again_after_a_failed_call(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)] * 2, models_context=True, context=100_000, busy=0)
    ctx = make_ctx(ui_http_retries=0)

    async def run() -> list[str]:
        out = []
        for busy in (0, 1, 0):
            services[2]["busy"] = busy
            out.append([s.reply async for s in chat_turn(ctx, None, user("a cozy reading corner"))][-1])
        return out

    replies = asyncio.run(run())
    assert "Here is a plan" in replies[0] and "loading" in replies[1] and "Here is a plan" in replies[2]
    assert len(services[2]["tokenize_log"]) == 2 and len(services[2]["models_log"]) == 2


def test_unknown_context_retries_once_without_max_tokens(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], context=1500)  # enforced, but not told: no /tokenize, no length
    ctx = make_ctx()
    replies, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert scene is not None and "Here is a plan" in replies[-1]
    first, retry = calls(services, "scene_plan")
    assert first["max_tokens"] == ctx.settings.ui_plan_max_tokens and "max_tokens" not in retry


def test_oldest_context_goes_first_when_the_room_is_short(make_ctx: Any, services: Any) -> None:
    ctx = make_ctx()
    scene = ctx.workspace.create()
    scene.objects = [SceneObject(id="obj-00000001", name="Armchair", prompt="a green armchair")]
    earlier = [f"request {i}: " + "a long story about chairs " * 15 for i in range(3)]
    scene.chat = [ChatRecord(role="user", content=text, kind="plan") for text in earlier]
    ctx.workspace.save(scene)
    request = "add a floor lamp"
    full = plan_messages(request, max_objects=20, current=scene.objects, earlier=earlier)
    services[2].update(plans=[json.dumps({"remove": [], "add": [], "change": []})], tokenize=True)
    without = [full[0], *full[3:]]  # the worked example (the oldest turn) goes first
    services[2]["context"] = fake_prompt_tokens(without) + plan_min_tokens() - 50  # one more turn too many

    async def run() -> list[str]:
        return [step.reply async for step in chat_turn(ctx, scene.id, user(request))]

    replies = asyncio.run(run())
    assert replies[-1].startswith("Nothing changed")
    (plan,) = calls(services, "scene_edit")
    assert plan["messages"] == [full[0], *full[4:]]  # then the oldest earlier request
    assert plan["max_tokens"] >= plan_min_tokens()


def test_too_long_message_is_answered_kindly_and_nothing_changes(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], tokenize=True, context=1000)
    ctx = make_ctx()
    replies, scene = asyncio.run(run_turn(ctx, None, "Create a scene with " + "one more chair, " * 300))
    assert "too long" in replies[-1] and "shorten" in replies[-1] and "Nothing was changed" in replies[-1]
    assert calls(services, "scene_plan") == [] and scene is None and ctx.workspace.list() == []


def test_slow_but_steady_plan_is_not_cut_off_by_the_timeout(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], chunk_chars=40, chunk_delay_s=0.1)  # ~1.5 s in all
    ctx = make_ctx(ui_http_timeout_s=0.5)
    replies, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert scene is not None and len(scene.objects) == 2, replies[-1]


def test_silent_plan_times_out_with_a_message(make_ctx: Any, services: Any) -> None:
    services[2].update(plans=[json.dumps(PLAN)], stall_s=1.5)
    ctx = make_ctx(ui_http_timeout_s=0.5, ui_http_retries=0)
    replies, scene = asyncio.run(run_turn(ctx, None, "a cozy reading corner"))
    assert "did not answer in time" in replies[-1] and "Nothing was changed" in replies[-1]
    assert scene is None and ctx.workspace.list() == []


# --- against the real LLM service (tiny profile, in-thread) -------------------------------------------------------
def test_real_llm_service_counts_and_the_client_clamps(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.llm.conftest import running_server  # loads torch: only here

    cache = tmp_path_factory.getbasetemp() / "model-cache"
    llm_settings = Settings(_env_file=None, profile="tiny", cache_dir=cache, api_key=None, hf_token=None)
    messages = [
        {"role": "system", "content": "Answer yes or no."},
        {"role": "user", "content": "Is a chair furniture?"},
    ]

    async def run(base_url: str) -> tuple[str, Count, str]:
        services = Services(Settings(_env_file=None, llm_base_url=base_url, api_key=None))

        async def answer(sent: list[dict[str, str]], max_tokens: int) -> str:
            deltas = services.llm.stream_json(sent, ANSWER_SCHEMA, "answer", max_tokens=max_tokens)
            return "".join([d async for d in deltas])

        try:
            # Far over any context: sent as is, the server would refuse it (400 context_length_exceeded).
            raw = await answer(messages, 1_000_000)
            count = await services.llm.counter.count(messages)
            huge = [messages[0], {"role": "user", "content": "chair " * 5000}]
            with pytest.raises(PromptTooLong) as too_long:
                await answer(huge, 32)
            return raw, count, too_long.value.message
        finally:
            await services.aclose()

    with running_server(llm_settings) as server:
        raw, count, message = asyncio.run(run(server.url))
        served = llm_settings.llm_served_name
        chat = server.client().chat.completions.create(model=served, messages=messages, max_tokens=1)
    assert json.loads(raw)["answer"] in ("yes", "no")
    assert count.exact and count.context == 4096 and count.prompt_tokens == chat.usage.prompt_tokens
    assert "too long" in message and "4096" in message
