"""The studio against another OpenAI-compatible server in a process of its own, as with vLLM, a NIM or a replica
behind a load balancer: no NIM health route, no `/tokenize`, its context only in `/v1/models`. The real app (a
subprocess) shows it ready and plans a scene through it; nothing of our LLM service runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from config import ROOT
from tests.studio.fakes import PLAN, fake_trellis
from tests.studio.live import base_env, studio_app
from tests.studio.test_live_app import user
from tests.support import free_port, serve_in_thread, wait_http

pytestmark = pytest.mark.slow

SERVER = """
import json, os, sys
import uvicorn
from tests.studio.fakes import fake_llm
state = {"plans": [os.environ["PLAN"]] * 4, "not_ours": True, "models_context": True, "context": 32768}
uvicorn.run(fake_llm(state), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PLAN": json.dumps(PLAN), "PYTHONPATH": str(ROOT)}
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/v1/models", timeout_s=60)
            assert httpx.get(f"{url}/v1/health/ready").status_code == 404  # not our service
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_the_studio_plans_through_another_openai_compatible_server(other_server: str, tmp_path: Path) -> None:
    with (
        serve_in_thread(fake_trellis({})) as trellis,
        studio_app(
            tmp_path / "data", tmp_path / "logs", base_env(tmp_path / "data", tmp_path / "cache"), other_server, trellis
        ) as app,
    ):
        client = Client(app, verbose=False)
        history, scene = client.predict(user("a cozy reading corner"), "plan", api_name="/chat")
    assert [o["name"] for o in scene["objects"]] == [o["name"] for o in PLAN["objects"]], history[-1]
