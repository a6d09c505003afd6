"""The plan through gradio_client, with the real app on fake services: the mode's default, streamed cards, and the
planning context (what the LLM is sent: never error text, small talk or the assistant's summaries)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from gradio_client import Client

from tests.studio.fake_stack import FakeStack
from tests.studio.fakes import NO_EDIT, PLAN, edit
from tests.studio.test_live_app import last_text, user

pytestmark = pytest.mark.slow
BUSY = 10  # 503s in a row: more than UI_HTTP_RETRIES retries, so the turn ends with an error
THREE = {**PLAN, "objects": [*PLAN["objects"], {**PLAN["objects"][1], "name": "Side table", "prompt": "a side table"}]}


def chat(client: Client, history: list[dict[str, Any]], text: str, *mode: str) -> tuple[list[dict[str, Any]], Any]:
    return client.predict([*history, *user(text)], *mode, api_name="/chat")


def test_a_client_that_leaves_out_the_mode_plans(fake_app: FakeStack) -> None:
    fake_app.reset(plans=[json.dumps(PLAN)])
    history, scene = Client(fake_app.app, verbose=False).predict(user("a cozy reading corner"), api_name="/chat")
    assert last_text(history).startswith("Here is a plan for") and [o["name"] for o in scene["objects"]] == [
        "Armchair",
        "Floor lamp",
    ]
    (call,) = fake_app.plan_calls()
    assert call["response_format"]["json_schema"]["name"] == "scene_plan"


def test_ask_mode_answers_as_chat(fake_app: FakeStack) -> None:
    fake_app.reset()
    history, scene = Client(fake_app.app, verbose=False).predict(user("a cozy reading corner"), "ask", api_name="/chat")
    assert last_text(history) == "Hello there!" and scene is None and fake_app.plan_calls() == []


def test_cards_stream_before_the_plan_is_saved(fake_app: FakeStack) -> None:
    fake_app.reset(plans=[json.dumps(THREE)], chunk_chars=6, chunk_delay_s=0.05)
    job = Client(fake_app.app, verbose=False).submit(user("a cozy reading corner"), api_name="/chat")
    started, first_card = time.perf_counter(), None
    streamed = []
    for history, scene in job:
        if first_card is None and scene and scene["objects"]:
            first_card = time.perf_counter() - started
            streamed.append((last_text(history), len(scene["objects"])))
    history, scene = job.result()
    total = time.perf_counter() - started
    assert first_card is not None and first_card < total - 1.0  # well before the end
    reply, cards = streamed[0]
    assert reply.startswith("Planning… ") and cards < 3
    assert last_text(history).startswith("Here is a plan") and len(scene["objects"]) == 3
    assert fake_app.scene_file(scene["id"])["objects"] == scene["objects"]


def test_an_edit_that_changes_nothing_says_so(fake_app: FakeStack) -> None:
    fake_app.reset(plans=[json.dumps(PLAN), json.dumps(NO_EDIT)])
    client = Client(fake_app.app, verbose=False)
    history, scene = chat(client, [], "a cozy reading corner")
    before = fake_app.scene_file(scene["id"])
    history, after = chat(client, history, "add an armchair, a floor lamp and a small side table")
    assert last_text(history).startswith("Nothing changed: ") and after["id"] == scene["id"]
    assert fake_app.scene_file(scene["id"]) == before


def test_errors_and_small_talk_never_reach_the_planner(fake_app: FakeStack) -> None:
    fake_app.reset(plans=[json.dumps(PLAN)] * 2, busy=BUSY)  # the LLM answers "busy" until the studio gives up
    client = Client(fake_app.app, verbose=False)
    history, scene = chat(client, [], "a cozy reading corner")
    error = last_text(history)
    assert "Nothing was changed" in error and scene is None
    fake_app.llm["busy"] = 0
    history, scene = chat(client, history, "a cozy reading corner")  # sent again after the error
    assert scene and all(error[:20] not in o["name"] + o["prompt"] for o in scene["objects"])
    history, _ = chat(client, history, "hello! what can you do?", "ask")
    small_talk = last_text(history)
    fake_app.llm["plans"] = [edit(add=[{**PLAN["objects"][1], "name": "Rug", "prompt": "a rug"}])]
    history, edited = chat(client, history, "add a rug")
    assert [o["name"] for o in edited["objects"]] == ["Armchair", "Floor lamp", "Rug"]

    for call in fake_app.plan_calls():
        sent = json.dumps(call["messages"])
        assert error[:40] not in sent and small_talk not in sent and "what can you do" not in sent
        assert "Here is a plan" not in sent  # nor the assistant's own summaries
    last = fake_app.plan_calls()[-1]["messages"]
    assert last[-2]["content"] == "Earlier request for this scene: a cozy reading corner"
    assert "add a rug" in last[-1]["content"] and '"name": "Floor lamp"' in last[-1]["content"]
