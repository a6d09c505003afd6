"""Shape engine events into OpenAI chat-completion responses and `chat.completion.chunk` SSE events.

Streams follow OpenAI/vLLM exactly: a first chunk per choice with the role, content deltas, a last chunk per
choice with `finish_reason` and an empty delta, then (with `stream_options.include_usage`) one chunk with empty
`choices` and the usage; every chunk carries `"usage": null` otherwise. With tools in play the text of a choice
is held until it ends, because only the whole text tells whether it is a tool call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nim_llm.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    DeltaToolCall,
    TokenLogprobOut,
    ToolCall,
    TopLogprob,
    Usage,
    completion_id,
)
from nim_llm.sampling import TokenLogprob
from nim_llm.sequence import FinishEvent, TokenEvent
from nim_llm.tools import parse_tool_calls


@dataclass
class ChoiceState:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: FinishEvent | None = None

    def add(self, event: TokenEvent | FinishEvent) -> None:
        if isinstance(event, TokenEvent):
            self.text += event.text
            self.logprobs.extend(event.logprobs)
        else:
            self.finish = event


class ResponseBuilder:
    def __init__(
        self,
        req: ChatCompletionRequest,
        served_name: str,
        fingerprint: str,
        tokenizer: Any,
        tool_names: set[str],
        prompt_tokens: int,
    ) -> None:
        self.req = req
        self.model = served_name
        self.fingerprint = fingerprint
        self.tokenizer = tokenizer
        self.tool_names = tool_names
        self.prompt_tokens = prompt_tokens
        self.id = completion_id()
        self.created = int(time.time())

    # --- non-streaming --------------------------------------------------------------------------------------
    def response(self, choices: list[ChoiceState]) -> dict[str, Any]:
        out = []
        for index, state in enumerate(choices):
            calls = self._tool_calls(state)
            message = AssistantMessage(content=None if calls else state.text, tool_calls=calls)
            out.append(
                Choice(
                    index=index,
                    message=message,
                    logprobs=self._logprobs(state.logprobs),
                    finish_reason=self._finish_reason(state, calls),
                )
            )
        body = ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=out,
            usage=self._usage(choices),
            system_fingerprint=self.fingerprint,
        )
        return body.model_dump(mode="json")

    # --- streaming ------------------------------------------------------------------------------------------
    def role_chunk(self) -> str:
        return self._chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(self.req.n)])

    def event_chunks(self, index: int, event: TokenEvent | FinishEvent, state: ChoiceState) -> list[str]:
        if isinstance(event, TokenEvent):
            if self.tool_names or not (event.text or event.logprobs):
                return []
            delta = Delta(content=event.text)
            return [self._chunk([ChunkChoice(index=index, delta=delta, logprobs=self._logprobs(event.logprobs))])]
        chunks = []
        calls = self._tool_calls(state)
        if calls:
            deltas = [DeltaToolCall(index=i, id=c.id, function=c.function) for i, c in enumerate(calls)]
            chunks.append(self._chunk([ChunkChoice(index=index, delta=Delta(tool_calls=deltas))]))
        elif self.tool_names and state.text:
            chunks.append(
                self._chunk(
                    [ChunkChoice(index=index, delta=Delta(content=state.text), logprobs=self._logprobs(state.logprobs))]
                )
            )
        reason = self._finish_reason(state, calls)
        chunks.append(self._chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=reason)]))
        return chunks

    def usage_chunk(self, choices: list[ChoiceState]) -> str:
        return self._chunk([], usage=self._usage(choices))

    # --- parts ----------------------------------------------------------------------------------------------
    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=self.fingerprint,
            choices=choices,
            usage=usage,
        ).to_sse()

    def _tool_calls(self, state: ChoiceState) -> list[ToolCall] | None:
        return parse_tool_calls(state.text, self.tool_names) if self.tool_names else None

    @staticmethod
    def _finish_reason(state: ChoiceState, calls: list[ToolCall] | None) -> Any:
        if calls:
            return "tool_calls"
        return state.finish.reason if state.finish else None

    def _usage(self, choices: list[ChoiceState]) -> Usage:
        completion = sum(c.finish.completion_tokens for c in choices if c.finish)
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=completion, total_tokens=self.prompt_tokens + completion
        )

    def _logprobs(self, items: list[TokenLogprob]) -> ChoiceLogprobs | None:
        if not self.req.logprobs:
            return None
        return ChoiceLogprobs(
            content=[
                TokenLogprobOut(
                    **self._token(i.token_id, i.logprob),
                    top_logprobs=[TopLogprob(**self._token(t, lp)) for t, lp in i.top],
                )
                for i in items
            ]
        )

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
