"""Wire models of the OpenAI chat-completions API, fields in the spec's order, and of vLLM's `/tokenize`.

Requests ignore unknown fields (clients send many we do not implement). Fields we accept but do not act on
(`frequency_penalty`, `presence_penalty`, `logit_bias`, `parallel_tool_calls`) are listed so their types are
still checked. The request owns its translation into engine sampling parameters.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nim_llm.sampling import MAX_SAMPLER_SEED, MIN_SAMPLER_SEED, SamplingParams

MAX_STOP_STRINGS = 16  # OpenAI allows 4; more only costs a substring search each
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limits for logit_bias
LOGIT_BIAS_RANGE = 100.0
MAX_TOKENS_LIMIT = 2**31 - 1  # any larger value is refused by the context check anyway; this keeps it an int32


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_Lenient):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int = Field(1, ge=1)  # the served limit, LLM_MAX_N, is checked by the service
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    # Any value the samplers accept (torch seeds take -2**63 .. 2**64-1); choice i samples with seed + i.
    seed: int | None = Field(None, ge=MIN_SAMPLER_SEED, le=MAX_SAMPLER_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # Extension (as in vLLM): keep generating past end-of-turn tokens, for benchmarks and load tests.
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops_bounded(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in items):
            raise ValueError("stop strings must not be empty")
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"stop strings are at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_bounded(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v and any(abs(b) > LOGIT_BIAS_RANGE for b in v.values()):
            raise ValueError(f"logit_bias values are between -{LOGIT_BIAS_RANGE:g} and {LOGIT_BIAS_RANGE:g}")
        return v

    @property
    def text_chars(self) -> int:
        """Characters of text the prompt is made of (messages and tool definitions), before templating."""
        chars = len(json.dumps([t.model_dump() for t in self.tools])) if self.tools else 0
        for m in self.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif m.content:
                chars += sum(len(p.text or "") for p in m.content)
            chars += sum(len(c.function.arguments) + len(c.function.name) for c in m.tool_calls or [])
        return chars

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_sampling_params(self, *, max_tokens: int, seed: int, grammar: str | None) -> SamplingParams:
        """Engine parameters for one choice; the serving layer decides the budget, seed and grammar."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
            stop=self.stop_list,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            ignore_eos=self.ignore_eos,
            grammar=grammar,
        )


# --- responses -------------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str


class DeltaToolCall(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def to_sse(self) -> str:
        data = self.model_dump(mode="json")
        # OpenAI deltas carry only the fields that changed; unset ones are left out rather than sent as null.
        for out, choice in zip(data["choices"], self.choices, strict=True):
            out["delta"] = choice.delta.model_dump(mode="json", exclude_none=True)
        return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- tokenize (vLLM's extension of the OpenAI API, served at /tokenize) -------------------------------------------
class TokenizeRequest(_Lenient):
    """Count a prompt's tokens without generating: chat `messages` (templated exactly as `/v1/chat/completions`
    templates them, tools included) or a plain `prompt`. vLLM's two request shapes, told apart by their fields."""

    model: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prompt: str | None = None
    add_generation_prompt: bool = True  # messages only
    add_special_tokens: bool = True  # prompt only (a chat template writes its own special tokens)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send either `messages` or `prompt`")
        return self

    def to_chat_request(self, served_name: str) -> ChatCompletionRequest:
        """The chat request whose prompt these messages make, so both are templated by the same code."""
        return ChatCompletionRequest(
            model=self.model or served_name,
            messages=self.messages or [],
            tools=self.tools,
            tool_choice=self.tool_choice,
        )


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
