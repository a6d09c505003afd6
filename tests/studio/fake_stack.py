"""The real studio app (app.py, a subprocess) on the fake services (tests/studio/fakes.py, served in this process):
the tests steer the LLM's answers and timing through its state dict and read what the app sent it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.studio.fakes import fake_llm, fake_trellis
from tests.studio.live import base_env, studio_app
from tests.support import serve_in_thread


@dataclass
class FakeStack:
    app: str
    llm: dict[str, Any]  # the fake LLM's state: plans, stream timing, log of request bodies
    trellis: dict[str, Any]
    data_dir: Path

    def reset(self, **llm: Any) -> None:
        """A fresh LLM state for the next test (the app keeps running)."""
        self.llm.clear()
        self.llm.update({"plans": [], "log": [], **llm})

    def plan_calls(self) -> list[dict[str, Any]]:
        """The json_schema (plan and edit) requests the LLM received."""
        return [b for b in self.llm["log"] if "response_format" in b]

    def scene_file(self, scene_id: str) -> dict[str, Any]:
        return json.loads((self.data_dir / "scenes" / scene_id / "scene.json").read_text())


@contextlib.contextmanager
def fake_stack(root: Path, **app_env: str) -> Iterator[FakeStack]:
    """The app on its defaults (`app_env`: the settings a test is about) talking to fresh fake services."""
    llm_state: dict[str, Any] = {"plans": [], "log": []}
    trellis_state: dict[str, Any] = {"log": []}
    data_dir, log_dir = root / "data", root / "logs"
    with (
        serve_in_thread(fake_llm(llm_state)) as llm,
        serve_in_thread(fake_trellis(trellis_state)) as trellis,
        studio_app(data_dir, log_dir, base_env(data_dir, root / "cache"), llm, trellis, **app_env) as app,
    ):
        yield FakeStack(app, llm_state, trellis_state, data_dir)
