"""The LLM engine on a small GPU: it takes turns with the 3D service through the VRAM lease (16gb/24gb profiles),
and out of GPU memory fails the answers of that step with advice, never the engine.

A second `VramLease` object with role "3d" plays the 3D worker; flock treats two open files of one process like
two processes, so this is the real cross-process protocol.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from nim_llm.batch import PaddedBatch
from nim_llm.engine import Engine
from nim_llm.loading import load_model
from nim_llm.sampling import SamplingParams
from nim_llm.sequence import ErrorEvent, Event, FinishEvent, TokenEvent
from servicekit.vram import llm_plan
from servicekit.vram_lease import LEASE_FILE, VramLease
from tests.vram.conftest import cuda_oom

HOLD_S = 0.3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        _env_file=None, profile="tiny", cache_dir=tmp_path_factory.mktemp("llm"), api_key=None, hf_token=None
    )
    return load_model(settings, llm_plan(settings))


@pytest.fixture
def lease_path(tmp_path: Path) -> Path:
    return tmp_path / LEASE_FILE


def new_engine(tiny: Any, **extra: Any) -> Engine:
    return Engine(
        tiny.model,
        tiny.tokenizer,
        max_batch_size=4,
        max_queue=8,
        max_context=tiny.max_context,
        request_timeout_s=60,
        idle_wait_s=0.05,
        grammar_cache_size=4,
        json_max_close_tokens=16,
        **extra,
    )


@pytest.fixture
def engine(tiny: Any, lease_path: Path) -> Iterator[Engine]:
    engine = new_engine(tiny, lease=VramLease(lease_path, enabled=True, role="llm"))
    engine.start()
    yield engine
    engine.stop()


class OomOnceBatch(PaddedBatch):
    """The eager batch, whose next decode step runs out of CUDA memory once."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.failures = 1

    def step(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise cuda_oom()
        return super().step()


class Answer:
    """Collects one sequence's events with the time each arrived."""

    def __init__(self) -> None:
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.done = threading.Event()
        self.error: ErrorEvent | None = None

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, TokenEvent) and self.first_token_at is None:
            self.first_token_at = now
        elif isinstance(event, FinishEvent | ErrorEvent):
            self.error = event if isinstance(event, ErrorEvent) else None
            self.finished_at = now
            self.done.set()


def submit(engine: Engine, max_tokens: int) -> tuple[str, Answer]:
    answer = Answer()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return engine.submit([1, 2, 3, 4], params, answer), answer


def test_answers_wait_while_the_3d_service_holds_the_lease(engine: Engine, lease_path: Path) -> None:
    three_d = VramLease(lease_path, enabled=True, role="3d")
    three_d.acquire()
    _, answer = submit(engine, 4)
    time.sleep(0.5)
    assert answer.first_token_at is None and engine.waiting == 1 and engine.waiting_for_gpu
    three_d.release()
    assert answer.done.wait(30) and answer.error is None
    time.sleep(0.2)
    assert not engine.waiting_for_gpu
    assert three_d.try_acquire(), "the engine must release the lease once its batch is empty"
    three_d.release()


def test_engine_hands_the_gpu_to_a_waiting_3d_stage_and_gets_it_back(engine: Engine, lease_path: Path) -> None:
    _, running = submit(engine, 400)
    deadline = time.monotonic() + 30
    while running.first_token_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    three_d = VramLease(lease_path, enabled=True, role="3d")
    stage: dict[str, float] = {}

    def gpu_stage() -> None:
        with three_d.hold(timeout_s=60):
            stage["start"] = time.monotonic()
            time.sleep(HOLD_S)
            stage["end"] = time.monotonic()

    worker = threading.Thread(target=gpu_stage)
    worker.start()
    time.sleep(0.2)  # the 3D stage now waits for the lease
    _, later = submit(engine, 4)
    worker.join(60)
    assert running.done.wait(60) and later.done.wait(60)
    assert running.error is None and later.error is None
    assert running.finished_at is not None and running.finished_at <= stage["start"], "the running answer finishes"
    assert later.first_token_at is not None and later.first_token_at >= stage["end"], "a new answer waits its turn"


def test_a_queued_answer_can_be_cancelled_while_the_3d_service_has_the_gpu(engine: Engine, lease_path: Path) -> None:
    three_d = VramLease(lease_path, enabled=True, role="3d")
    with three_d.hold():
        seq_id, answer = submit(engine, 4)
        time.sleep(0.3)
        engine.cancel(seq_id)
        deadline = time.monotonic() + 5
        while (engine.waiting or engine.waiting_for_gpu) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.waiting == 0 and not engine.waiting_for_gpu and answer.first_token_at is None


def test_a_releasing_holder_lets_the_waiting_role_go_first(lease_path: Path) -> None:
    three_d = VramLease(lease_path, enabled=True, role="3d")
    llm = VramLease(lease_path, enabled=True, role="llm")
    three_d.acquire()
    assert not llm.try_acquire()
    llm.want(True)
    assert three_d.others_waiting() and not llm.others_waiting()
    three_d.release()
    assert not three_d.try_acquire(), "the other role is waiting: it goes first"
    assert llm.try_acquire() and llm.held
    llm.want(False)
    assert not three_d.try_acquire()
    llm.release()
    assert three_d.try_acquire()
    three_d.release()


def test_out_of_gpu_memory_fails_that_step_with_advice_and_the_engine_goes_on_leaner(tiny: Any) -> None:
    engine = new_engine(tiny, batch=OomOnceBatch(tiny.model), oom_advice="set VRAM_PROFILE=16gb (now 24gb)")
    engine.start()
    try:
        _, failed = submit(engine, 8)
        assert failed.done.wait(30) and failed.error is not None
        assert "ran out of memory" in failed.error.error.message and "VRAM_PROFILE=16gb" in failed.error.error.message
        assert engine.max_batch_size == 2  # the leaner mode: half the batch from now on
        _, answered = submit(engine, 8)
        assert answered.done.wait(30) and answered.error is None
    finally:
        engine.stop()
