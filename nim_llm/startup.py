"""Bring the model up in a background thread: load, start the engine, warm up, then report ready.

Kept apart from the app so the order (and the failure messages) can be read in one place. Any failure leaves
the service live but not ready, with the reason shown by `/v1/health/ready`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import config
from config import Settings
from nim_llm.engine import Engine
from nim_llm.sampling import SamplingParams
from nim_llm.sequence import ErrorEvent, Event, FinishEvent
from nim_llm.service import LoadState
from servicekit.vram import VramPlan
from servicekit.vram_lease import lease_for

log = logging.getLogger("nim_llm.startup")
# Shown with the ready status (and in the studio's header) while the bundled model answers.
DEMO_NOTE = "The bundled SmolLM2-135M is answering: demo quality, so scene plans are simple and repetitive."
WARMUP_MESSAGES = [{"role": "user", "content": "Hello!"}]


def start_model(settings: Settings, plan: VramPlan, state: LoadState, engine: Engine | None = None) -> None:
    try:
        if engine is None:
            engine = load_engine(settings, plan, state)
        state.model_id = engine.model_id or state.model_id
        if state.model_id == config.BUILTIN_SMOLLM2 and not state.note:
            state.note = DEMO_NOTE
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


def load_engine(settings: Settings, plan: VramPlan, state: LoadState) -> Engine:
    """LLM_MODEL's engine, or LLM_FALLBACK_MODEL's when LLM_MODEL cannot be loaded (said in the ready body)."""
    from nim_llm.loading import ModelLoadError

    state.reason = f"Loading {settings.llm_model} and preparing its decode shapes ..."
    try:
        return build_engine(settings, plan)
    except ModelLoadError as err:
        fallback = settings.llm_fallback_model
        if not fallback:
            raise
        log.warning("LLM_MODEL could not be loaded (%s); loading the fallback model %s instead", err, fallback)
        state.reason = f"Loading {fallback}: {settings.llm_model} could not be loaded ..."
        state.note = f"{DEMO_NOTE} LLM_MODEL could not be loaded: {err}"
        return build_engine(settings, plan, model_id=fallback)


def build_engine(settings: Settings, plan: VramPlan, model_id: str | None = None) -> Engine:
    """The model (default LLM_MODEL) loaded as `plan` says, in the engine LLM_ENGINE picks, sized by the settings
    within the plan."""
    from nim_llm.loading import load_model

    loaded = load_model(settings, plan, model_id)
    size = plan.llm_size(settings)
    slots = size.max_batch_size
    batch, max_context = None, loaded.max_context
    if engine_kind(settings, loaded.model) == "static":
        batch = static_batch(loaded.model, slots, size.slot_tokens, compile=settings.llm_compile)
        max_context = min(max_context, size.slot_tokens)
    return Engine(
        loaded.model,
        loaded.tokenizer,
        max_batch_size=slots,
        max_queue=settings.llm_max_queue,
        max_context=max_context,
        request_timeout_s=settings.llm_request_timeout_s,
        idle_wait_s=settings.llm_idle_wait_s,
        grammar_cache_size=settings.llm_grammar_cache_size,
        json_max_close_tokens=settings.llm_json_max_close_tokens,
        model_id=loaded.model_id,
        batch=batch,
        lease=lease_for(settings, plan, role="llm"),
        oom_advice=plan.oom_advice(),
    )


def engine_kind(settings: Settings, model: Any) -> str:
    """`static` or `eager` for LLM_ENGINE and this model (auto: static on CUDA when the model supports it)."""
    from nim_llm.llama_step import unsupported_reason

    reason = unsupported_reason(model)
    if settings.llm_engine == "static" and reason:
        raise RuntimeError(f"LLM_ENGINE=static cannot serve this model: {reason}")
    if settings.llm_engine == "auto" and (model.device.type != "cuda" or reason):
        if reason:
            log.info("eager engine: %s", reason)
        return "eager"
    return "static" if settings.llm_engine != "eager" else "eager"


def static_batch(model: Any, slots: int, slot_tokens: int, *, compile: bool) -> Any:
    """The slot batch, compiled and captured for every decode shape before the engine starts."""
    from nim_llm.slots import SlotBatch

    cuda = model.device.type == "cuda"
    slot_tokens = min(slot_tokens, int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30))
    batch = SlotBatch(model, slots=slots, slot_tokens=slot_tokens, compile=cuda and compile, cuda_graphs=cuda)
    batch.warm_up()
    return batch


def warm_up(engine: Engine, settings: Settings) -> None:
    """One short generation through the whole engine; readiness means this worked."""
    params = SamplingParams(max_tokens=settings.llm_warmup_tokens)
    generate_once(engine, WARMUP_MESSAGES, params, settings.llm_request_timeout_s, "warm-up generation")


def generate_once(
    engine: Engine, messages: list[dict[str, str]], params: SamplingParams, timeout_s: float, what: str
) -> FinishEvent:
    """Run one chat through the running engine and wait for it; raises RuntimeError naming `what` on failure."""
    done = threading.Event()
    outcome: list[Event] = []

    def sink(event: Event) -> None:
        if isinstance(event, FinishEvent | ErrorEvent):
            outcome.append(event)
            done.set()

    prompt = engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    engine.submit(list(prompt), params, sink)
    if not done.wait(timeout_s):
        raise RuntimeError(f"{what} did not finish within {timeout_s:g}s")
    if isinstance(outcome[0], ErrorEvent):
        raise RuntimeError(f"{what} failed: {outcome[0].error}")
    return outcome[0]  # type: ignore[return-value]  # the only other event the sink keeps
