"""Fixtures for the LLM service tests: settings for the tiny profile and real uvicorn servers around them.

The tiny model is built once per session into a session cache dir; every server loads it from there (~0.3 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from config import Settings
from nim_llm.app import create_app
from servicekit.vram import VramPlan, llm_plan
from tests.support import serve_in_thread, wait_http

SERVED = "meta/llama-3.1-8b-instruct"


@dataclass
class Server:
    url: str  # base URL including /v1
    app: Any

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", "unused")
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url, **kwargs)

    def metric(self, name: str) -> float:
        """Sum of every sample of `name` in /v1/metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm-cache")


@pytest.fixture(scope="session")
def make_settings(llm_cache: Path):
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "profile": "tiny",
            "cache_dir": llm_cache,
            "api_key": None,
            "hf_token": None,
            "llm_model": None,
            "llm_max_context": None,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@contextlib.contextmanager
def running_server(settings: Settings, *, ready: bool = True) -> Iterator[Server]:
    app = create_app(settings)
    with serve_in_thread(app) as base:
        if ready:
            wait_http(f"{base}/v1/health/ready", timeout_s=120)
        yield Server(f"{base}/v1", app)


@pytest.fixture(scope="session")
def tiny_server(make_settings) -> Iterator[Server]:
    with running_server(make_settings()) as server:
        yield server


@pytest.fixture
def client(tiny_server: Server) -> openai.OpenAI:
    return tiny_server.client()


def ask(client: openai.OpenAI, text: str = "Hello there!", **kwargs: Any):
    kwargs.setdefault("model", SERVED)
    kwargs.setdefault("seed", 7)
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kwargs)


def with_plan(settings: Settings) -> tuple[Settings, VramPlan]:
    """The settings and the GPU memory plan a service would compute for them once at start."""
    return settings, llm_plan(settings)
