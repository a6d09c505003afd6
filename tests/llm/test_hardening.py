"""Requests that used to wedge or bloat the LLM service: each test reproduces one hole through real HTTP.

- out-of-range numbers (a seed past the samplers' range made a 500 and left 7 of 8 choices generating);
- a failure while queueing a request's choices (the queued ones kept running with nobody reading them);
- unexpected 500s (not counted in `request_failure_total`, and the keep-alive connection was closed);
- prompts of megabytes (tokenized before being refused: seconds of CPU and ~30 MB of memory each, never given
  back).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nim_llm.sampling import MAX_SAMPLER_SEED, MIN_SAMPLER_SEED
from tests.llm.conftest import SERVED, Server, running_server
from tests.support import free_port, wait_http

HUGE_PROMPT = "word " * 380_000  # 1.9 MB, under the default 2 MB body limit
MEMORY_GROWTH_LIMIT_MB = 120  # the old code grew ~450 MB over the same 15 requests


def chat(client: httpx.Client, server: Server, **body: object) -> httpx.Response:
    body.setdefault("model", SERVED)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return client.post(f"{server.url}/chat/completions", json=body)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", MAX_SAMPLER_SEED + 1),
        ("seed", MIN_SAMPLER_SEED - 1),
        ("seed", -(2**70)),
        ("max_tokens", 2**40),
        ("stop", [f"s{i}" for i in range(17)]),
        ("stop", "x" * 257),
        ("logit_bias", {"1": 1000}),
    ],
)
def test_out_of_range_field_is_a_400_naming_it(
    tiny_server: Server, http: httpx.Client, field: str, value: object
) -> None:
    r = (
        chat(http, tiny_server, max_tokens=2, **{field: value})
        if field != "max_tokens"
        else chat(http, tiny_server, **{field: value})
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_every_choice_answers_when_seed_is_at_the_top_of_the_range(tiny_server: Server, http: httpx.Client) -> None:
    """seed + choice index passes the samplers' maximum: it wraps instead of failing the 8th choice."""
    r = chat(http, tiny_server, seed=MAX_SAMPLER_SEED - 6, n=8, max_tokens=4)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 8


@pytest.fixture(scope="module")
def flaky_server(make_settings) -> Iterator[Server]:
    """A server whose engine fails to queue the third choice of any request (a stand-in for any submit failure)."""
    with running_server(make_settings()) as server:
        engine = server.app.state.model.engine
        real_submit = engine.submit
        calls = {"n": 0, "fail_at": None}

        def submit(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise RuntimeError("injected submit failure")
            return real_submit(*args, **kwargs)

        engine.submit = submit
        server.calls = calls  # type: ignore[attr-defined]
        yield server


def test_failed_submit_cancels_the_choices_already_queued(flaky_server: Server, http: httpx.Client) -> None:
    engine = flaky_server.app.state.model.engine
    flaky_server.calls.update(n=0, fail_at=8)  # type: ignore[attr-defined]
    r = chat(http, flaky_server, n=8, max_tokens=4000, ignore_eos=True)
    flaky_server.calls["fail_at"] = None  # type: ignore[attr-defined]
    assert r.status_code == 500
    deadline = time.monotonic() + 0.5  # the queued choices would run for seconds
    while engine.running + engine.waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.running + engine.waiting == 0, (engine.running, engine.waiting, r.text[:300])


def test_unexpected_500_is_counted_and_keeps_the_connection(flaky_server: Server, http: httpx.Client) -> None:
    before = flaky_server.metric("request_failure_total")
    flaky_server.calls.update(n=0, fail_at=1)  # type: ignore[attr-defined]
    r = chat(http, flaky_server, max_tokens=2)
    flaky_server.calls["fail_at"] = None  # type: ignore[attr-defined]
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert flaky_server.metric("request_failure_total") == before + 1
    # The same client (one pooled keep-alive connection) goes on working.
    for _ in range(3):
        assert chat(http, flaky_server, max_tokens=2).status_code == 200


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def service_process(llm_cache: Path) -> Iterator[tuple[str, int]]:
    """The service as its own process, so its memory is measured alone."""
    port = free_port()
    env = {
        **os.environ,
        "CHAT3D_PROFILE": "tiny",
        "CACHE_DIR": str(llm_cache),
        "LLM_PORT": str(port),
        "API_KEY": "",
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "nim_llm.run_llama_local"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/health/ready", timeout_s=180)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_huge_prompts_are_refused_without_growing_memory(service_process: tuple[str, int]) -> None:
    url, pid = service_process
    body = {"model": SERVED, "max_tokens": 4, "messages": [{"role": "user", "content": HUGE_PROMPT}]}
    with httpx.Client(timeout=120) as client:
        assert client.post(f"{url}/chat/completions", json=body).status_code == 400  # warm every code path once
        baseline = _rss_mb(pid)
        for _ in range(15):
            r = client.post(f"{url}/chat/completions", json=body)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "context_length_exceeded"
        tokenize = client.post(url.removesuffix("/v1") + "/tokenize", json={"prompt": HUGE_PROMPT})
        assert tokenize.status_code == 400
    assert _rss_mb(pid) - baseline < MEMORY_GROWTH_LIMIT_MB
