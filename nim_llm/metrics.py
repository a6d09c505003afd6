"""Prometheus metrics with the names NVIDIA NIM for LLMs exposes (so existing dashboards work).

One registry per app instance, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nim_llm.sequence import FinishEvent

# NIM's (vLLM's) bucket edges, so histograms are comparable with a real NIM.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class Metrics:
    def __init__(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("num_requests_running", "Sequences in the running batch.", registry=r).set_function(running)
        Gauge("num_requests_waiting", "Sequences waiting for a batch slot.", registry=r).set_function(waiting)
        self.success = Counter("request_success", "Requests that completed.", registry=r)
        self.failure = Counter("request_failure", "Requests that failed, by reason.", ["reason"], registry=r)
        self.ttft = Histogram("time_to_first_token_seconds", "Time to first token.", buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("time_per_output_token_seconds", "Inter-token latency.", buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("e2e_request_latency_seconds", "Request latency.", buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("generation_tokens", "Tokens generated.", registry=r)

    def observe_choice(self, event: FinishEvent) -> None:
        self.generation_tokens.inc(event.completion_tokens)
        if event.first_token_s is None:
            return
        self.ttft.observe(event.first_token_s - event.submitted_s)
        if event.completion_tokens > 1:
            self.tpot.observe((event.finish_s - event.first_token_s) / (event.completion_tokens - 1))
        self.e2e.observe(event.finish_s - event.submitted_s)

    def observe_request(self, prompt_tokens: int, error_code: str | None) -> None:
        if error_code is None:
            self.success.inc()
            self.prompt_tokens.inc(prompt_tokens)
        else:
            self.failure.labels(reason=error_code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
