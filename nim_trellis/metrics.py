"""Prometheus metrics of the 3D service, in a registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("trellis_queue_depth", "Jobs waiting for the worker.", registry=self.registry)
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.jobs = Counter(
            "trellis_jobs", "Finished jobs by kind and outcome.", ["kind", "outcome"], registry=self.registry
        )
        self.rejected = Counter(
            "trellis_rejected_requests",
            "Requests refused before queueing, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.oom_retries = Counter(
            "trellis_oom_retries",
            "Jobs retried in a leaner mode after CUDA out-of-memory, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "trellis_stage_duration_seconds",
            "Time spent in each job stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "trellis_job_duration_seconds",
            "Run time of a job (excluding queue wait), by kind.",
            ["kind"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "trellis_queue_wait_seconds",
            "Time a job waited in the queue.",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
