"""Chat-completions logic: validate a request against the loaded model, submit its choices, shape the answer.

Everything that can be refused is refused before anything is queued, so a 4xx never costs model time: not
ready (503), unknown model (404), bad content or tools (400), a prompt whose characters alone cannot fit the
context (400, before it is templated or tokenized, so a huge prompt costs no memory), prompt or prompt +
max_tokens over the context (400 naming the limit), max_tokens too small for the response_format (400), queue
full (429). A request whose choices cannot all be queued queues none; an unexpected failure is a counted 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from config import Settings
from nim_llm import __version__
from nim_llm import tools as tool_calls
from nim_llm.engine import Engine, QueueFullError
from nim_llm.errors import APIError, bad_request, internal, not_found, not_ready, queue_full
from nim_llm.metrics import Metrics
from nim_llm.protocol import ChatCompletionRequest, ChatMessage
from nim_llm.responses import ChoiceState, ResponseBuilder
from nim_llm.sampling import choice_seed
from nim_llm.sequence import ErrorEvent, Event, FinishEvent, TokenEvent

log = logging.getLogger("nim_llm.service")
IsDisconnected = Callable[[], Awaitable[bool]]
CLIENT_GONE = "client_disconnected"  # request_failure_total reason for clients that left mid-generation


@dataclass
class LoadState:
    """What the API knows about the model: loading, ready or failed (with the reason)."""

    status: str = "loading"
    reason: str = "The model is loading."
    engine: Engine | None = None
    model_id: str = ""
    note: str = ""  # what a user should know about the model that answers (the bundled demo model, a fallback)

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.engine is not None


@dataclass
class Submission:
    """The sequences of one request and the queue their events arrive on, tagged with the choice index."""

    engine: Engine
    events: asyncio.Queue[tuple[int, Event]]
    seq_ids: list[str] = field(default_factory=list)
    open: set[int] = field(default_factory=set)

    def cancel_open(self) -> None:
        for index in list(self.open):
            self.engine.cancel(self.seq_ids[index])


class ChatService:
    def __init__(self, settings: Settings, state: LoadState, metrics: Metrics) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics

    # --- entry point ----------------------------------------------------------------------------------------
    async def create(
        self, req: ChatCompletionRequest, is_disconnected: IsDisconnected
    ) -> dict[str, Any] | AsyncIterator[str]:
        try:
            engine = self._ready_engine()
            self._check_model(req)
            check_prompt_chars(req.text_chars, engine)
            # Templating a large prompt and compiling a schema take CPU time: keep them off the event loop.
            prompt_ids, tools_shown, grammar = await asyncio.to_thread(self._prepare, req, engine)
            max_tokens = self._budget(req, engine, len(prompt_ids), grammar)
            sub = self._submit(req, engine, prompt_ids, max_tokens, grammar)
        except APIError as err:
            self.metrics.observe_request(0, err.code or err.type)
            raise
        except Exception as err:
            log.exception("chat request failed")
            self.metrics.observe_request(0, "internal_error")
            raise internal(f"The request failed: {type(err).__name__}") from err
        builder = ResponseBuilder(
            req,
            self.settings.llm_served_name,
            self._fingerprint(),
            engine.tokenizer,
            {t["function"]["name"] for t in tools_shown or []},
            len(prompt_ids),
        )
        if req.stream:
            return self._stream(sub, builder)
        return await self._complete(sub, builder, is_disconnected)

    # --- checks ---------------------------------------------------------------------------------------------
    def _ready_engine(self) -> Engine:
        return ready_engine(self.settings, self.state)

    def _check_model(self, req: ChatCompletionRequest) -> None:
        check_model_name(self.settings, self.state, req.model)
        if req.n > self.settings.llm_max_n:
            raise bad_request(
                f"n={req.n} is more than this server allows ({self.settings.llm_max_n}, LLM_MAX_N).", param="n"
            )

    def _prepare(self, req: ChatCompletionRequest, engine: Engine) -> tuple[list[int], list[dict] | None, str | None]:
        prompt_ids, tools = self._prompt(req, engine)
        return prompt_ids, tools, self._grammar(req, engine)

    def _prompt(self, req: ChatCompletionRequest, engine: Engine) -> tuple[list[int], list[dict] | None]:
        return chat_prompt(req, engine.tokenizer)

    def _grammar(self, req: ChatCompletionRequest, engine: Engine) -> str | None:
        schema = tool_calls.forced_call_schema(req)
        param = "tool_choice"
        fmt = req.response_format
        if schema is None and fmt is not None and fmt.type == "json_object":
            schema, param = {"type": "object"}, "response_format"
        elif schema is None and fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise bad_request(
                    "response_format type json_schema needs a `json_schema` object.",
                    param="response_format.json_schema",
                )
            schema, param = fmt.json_schema.schema_, "response_format.json_schema.schema"
        return engine.grammars.compile(schema, param) if schema is not None else None

    def _budget(self, req: ChatCompletionRequest, engine: Engine, prompt_tokens: int, grammar: str | None) -> int:
        limit = engine.max_context
        if prompt_tokens >= limit:
            raise bad_request(
                f"The prompt has {prompt_tokens} tokens; this model's context is {limit} tokens "
                "(LLM_MAX_CONTEXT), and it must leave room for the answer.",
                param="messages",
                code="context_length_exceeded",
            )
        wanted = req.requested_max_tokens
        if wanted is not None and prompt_tokens + wanted > limit:
            raise bad_request(
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is more than this "
                f"model's context of {limit} tokens (LLM_MAX_CONTEXT).",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = wanted or min(self.settings.llm_default_max_tokens, limit - prompt_tokens)
        if grammar is not None and max_tokens < engine.grammars.min_tokens(grammar):
            raise bad_request(
                f"max_tokens={max_tokens} cannot hold the shortest valid JSON for this request "
                f"({engine.grammars.min_tokens(grammar)} tokens).",
                param="max_tokens",
            )
        return max_tokens

    def _submit(
        self, req: ChatCompletionRequest, engine: Engine, prompt_ids: list[int], max_tokens: int, grammar: str | None
    ) -> Submission:
        loop = asyncio.get_running_loop()
        sub = Submission(engine, asyncio.Queue())
        base_seed = req.seed if req.seed is not None else secrets.randbits(63)
        for index in range(req.n):
            params = req.to_sampling_params(max_tokens=max_tokens, seed=choice_seed(base_seed, index), grammar=grammar)

            def sink(event: Event, index: int = index) -> None:
                loop.call_soon_threadsafe(sub.events.put_nowait, (index, event))

            try:
                sub.seq_ids.append(engine.submit(prompt_ids, params, sink))
            except QueueFullError:
                sub.cancel_open()
                raise queue_full(self.settings.llm_retry_after_s, engine.max_queue) from None
            except BaseException:
                sub.cancel_open()  # the choices already queued would otherwise run with nobody reading them
                raise
            sub.open.add(index)
        return sub

    def _fingerprint(self) -> str:
        key = f"{__version__}:{self.state.model_id}:{self.settings.llm_dtype}"
        return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]

    # --- answers --------------------------------------------------------------------------------------------
    async def _events(
        self, sub: Submission, is_disconnected: IsDisconnected | None = None
    ) -> AsyncIterator[tuple[int, TokenEvent | FinishEvent]]:
        """Events until every choice finished; raises the first error; cancels the rest on the way out."""
        poll = self.settings.llm_disconnect_poll_s
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while sub.open:
                try:
                    index, event = await asyncio.wait_for(sub.events.get(), timeout=poll)
                except TimeoutError:
                    index, event = -1, None
                # Checked on a clock, not only when idle: a busy stream delivers events every step.
                if is_disconnected is not None and loop.time() - checked >= poll:
                    checked = loop.time()
                    if await is_disconnected():
                        return
                if event is None:
                    continue
                if isinstance(event, ErrorEvent):
                    sub.open.discard(index)
                    raise event.error
                if isinstance(event, FinishEvent):
                    sub.open.discard(index)
                    self.metrics.observe_choice(event)
                yield index, event
        finally:
            sub.cancel_open()

    async def _complete(
        self, sub: Submission, builder: ResponseBuilder, is_disconnected: IsDisconnected
    ) -> dict[str, Any]:
        choices = [ChoiceState() for _ in range(builder.req.n)]
        try:
            async for index, event in self._events(sub, is_disconnected):
                choices[index].add(event)
        except APIError as err:
            self.metrics.observe_request(0, err.code or err.type)
            raise
        except Exception as err:
            log.exception("chat request failed")
            self.metrics.observe_request(0, "internal_error")
            raise internal(f"The request failed: {type(err).__name__}") from err
        if sub.open:  # the client went away; its sequences are cancelled and nobody reads this answer
            self.metrics.observe_request(0, CLIENT_GONE)
            return {}
        self.metrics.observe_request(builder.prompt_tokens, None)
        return builder.response(choices)

    async def _stream(self, sub: Submission, builder: ResponseBuilder) -> AsyncIterator[str]:
        choices = [ChoiceState() for _ in range(builder.req.n)]
        try:
            yield builder.role_chunk()
            async for index, event in self._events(sub):
                choices[index].add(event)
                for chunk in builder.event_chunks(index, event, choices[index]):
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # The client closed the stream: `_events` has cancelled the sequences on its way out.
            sub.cancel_open()
            self.metrics.observe_request(0, CLIENT_GONE)
            raise
        except Exception as err:
            # Mid-stream the status line is sent: the error travels as an SSE event, and the stream ends cleanly.
            error = err if isinstance(err, APIError) else internal(f"The request failed: {type(err).__name__}")
            if not isinstance(err, APIError):
                log.exception("chat stream failed")
            self.metrics.observe_request(0, error.code or error.type)
            yield error.to_sse()
            yield "data: [DONE]\n\n"
            return
        self.metrics.observe_request(builder.prompt_tokens, None)
        if builder.req.stream_options and builder.req.stream_options.include_usage:
            yield builder.usage_chunk(choices)
        yield "data: [DONE]\n\n"


# --- shared with /tokenize (nim_llm/tokenizing.py) -------------------------------------------------------------
def check_prompt_chars(chars: int, engine: Engine) -> None:
    """400 when the prompt's characters alone cannot fit the context: no token of this tokenizer covers more than
    `engine.max_token_chars` characters, so such a prompt has more tokens than the context holds. Checked before
    templating and tokenizing, which would cost seconds and hundreds of MB for a prompt of megabytes."""
    limit = engine.max_context * engine.max_token_chars
    if chars > limit:
        raise bad_request(
            f"The prompt has {chars} characters: more than this model's context of {engine.max_context} tokens "
            f"can hold (LLM_MAX_CONTEXT; at most {limit} characters). Please shorten it.",
            param="messages",
            code="context_length_exceeded",
        )


def ready_engine(settings: Settings, state: LoadState) -> Engine:
    """The running engine, or 503 with the reason while the model is loading or failed."""
    if not state.ready or state.engine is None:
        raise not_ready(state.reason, settings.llm_retry_after_s)
    return state.engine


def check_model_name(settings: Settings, state: LoadState, model: str) -> None:
    """404 unless `model` is the served name or the loaded model's id."""
    if model not in {settings.llm_served_name, state.model_id}:
        raise not_found(
            f"The model {model!r} does not exist; this server serves "
            f"{settings.llm_served_name!r} (see GET /v1/models).",
            param="model",
        )


def chat_prompt(
    req: ChatCompletionRequest, tokenizer: Any, *, add_generation_prompt: bool = True
) -> tuple[list[int], list[dict] | None]:
    """The prompt's token ids through the model's chat template, and the tools it shows the model."""
    tools = tool_calls.active_tools(req, tokenizer)
    messages = [_template_message(m, i) for i, m in enumerate(req.messages)]
    try:
        encoded = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )
    except Exception as err:  # template errors (e.g. unsupported role order) are the request's fault
        raise bad_request(f"The chat template rejected these messages: {err}", param="messages") from None
    return list(encoded["input_ids"]), tools


def _template_message(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates expect it: string content (text parts joined), tool calls as dicts."""
    content = message.content
    if isinstance(content, list):
        if any(p.type != "text" or p.text is None for p in content):
            raise bad_request(
                "Only text content parts are supported by this model.", param=f"messages[{index}].content"
            )
        content = "".join(p.text or "" for p in content)
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content or ""}
    if message.tool_calls:
        out["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out
