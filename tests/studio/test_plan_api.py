"""The plan through gradio_client, with the real app on fake services: the mode's default, streamed cards, and the
planning context (what the LLM is sent: never error text, small talk or the assistant's summaries)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from tests.studio.fake_stack import FakeStack, fake_stack
from tests.studio.fakes import NO_EDIT, PLAN, edit
from tests.studio.test_live_app import last_text, user

pytestmark = pytest.mark.slow
STALL_S = 4.0
THREE = {**PLAN, "objects": [*PLAN["objects"], {**PLAN["objects"][1], "name": "Side table", "prompt": "a side table"}]}


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeStack]:
    """The app with a short UI_HTTP_TIMEOUT_S: the timeout is what its tests are about."""
    with fake_stack(tmp_path_factory.mktemp("plan-api-timeout"), UI_HTTP_TIMEOUT_S="1.5") as s:
        yield s


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


def test_errors_and_small_talk_never_reach_the_planner(impatient: FakeStack) -> None:
    impatient.reset(plans=[json.dumps(PLAN)] * 2, stall_s=STALL_S)
    client = Client(impatient.app, verbose=False)
    history, scene = chat(client, [], "a cozy reading corner")
    error = last_text(history)
    assert "did not answer in time" in error and scene is None
    impatient.llm["stall_s"] = 0
    history, scene = chat(client, history, "a cozy reading corner")  # sent again after the timeout
    assert scene and all(error[:20] not in o["name"] + o["prompt"] for o in scene["objects"])
    history, _ = chat(client, history, "hello! what can you do?", "ask")
    small_talk = last_text(history)
    impatient.llm["plans"] = [edit(add=[{**PLAN["objects"][1], "name": "Rug", "prompt": "a rug"}])]
    history, edited = chat(client, history, "add a rug")
    assert [o["name"] for o in edited["objects"]] == ["Armchair", "Floor lamp", "Rug"]

    for call in impatient.plan_calls():
        sent = json.dumps(call["messages"])
        assert "did not answer" not in sent and small_talk not in sent and "what can you do" not in sent
        assert "Here is a plan" not in sent  # nor the assistant's own summaries
    last = impatient.plan_calls()[-1]["messages"]
    assert last[-2]["content"] == "Earlier request for this scene: a cozy reading corner"
    assert "add a rug" in last[-1]["content"] and '"name": "Floor lamp"' in last[-1]["content"]
