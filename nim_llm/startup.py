"""Bring the model up in a background thread: load, start the engine, warm up, then report ready.

Kept apart from the app so the order (and the failure messages) can be read in one place. Any failure leaves
the service live but not ready, with the reason shown by `/v1/health/ready`.
"""

from __future__ import annotations

import logging
import threading

from config import Settings
from nim_llm.engine import Engine
from nim_llm.sampling import SamplingParams
from nim_llm.sequence import ErrorEvent, Event, FinishEvent
from nim_llm.serving import ModelState

log = logging.getLogger("nim_llm.startup")
WARMUP_MESSAGES = [{"role": "user", "content": "Hello!"}]


def start_model(settings: Settings, state: ModelState, engine: Engine | None = None) -> None:
    try:
        if engine is None:
            state.reason = f"Loading {settings.llm_model} ..."
            engine = build_engine(settings)
        state.model_id = engine.model_id or state.model_id
        engine.start()
        state.engine = engine
        state.reason = "Warming up ..."
        warm_up(engine, settings)
    except Exception as err:
        log.exception("the model could not be started")
        state.status, state.reason = "failed", f"The model is not available: {err}"
        return
    state.status, state.reason = "ready", "Service is ready."
    log.info("ready: %s (context %d)", state.model_id, engine.max_context)


def build_engine(settings: Settings) -> Engine:
    from nim_llm.loading import load_model

    loaded = load_model(settings)
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        max_batch_size=int(settings.llm_max_batch_size or 1),
        max_queue=settings.llm_max_queue,
        max_context=loaded.max_context,
        request_timeout_s=settings.llm_request_timeout_s,
        idle_wait_s=settings.llm_idle_wait_s,
        grammar_cache_size=settings.llm_grammar_cache_size,
        json_max_close_tokens=settings.llm_json_max_close_tokens,
        model_id=loaded.model_id,
    )
    return engine


def warm_up(engine: Engine, settings: Settings) -> None:
    """One short generation through the whole engine; readiness means this worked."""
    done = threading.Event()
    outcome: list[Event] = []

    def sink(event: Event) -> None:
        if isinstance(event, FinishEvent | ErrorEvent):
            outcome.append(event)
            done.set()

    prompt = engine.tokenizer.apply_chat_template(
        WARMUP_MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    engine.submit(list(prompt), SamplingParams(max_tokens=settings.llm_warmup_tokens), sink)
    if not done.wait(settings.llm_request_timeout_s):
        raise RuntimeError(f"warm-up generation did not finish within {settings.llm_request_timeout_s:g}s")
    if isinstance(outcome[0], ErrorEvent):
        raise RuntimeError(f"warm-up generation failed: {outcome[0].error}")
