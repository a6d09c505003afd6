"""One generated sequence: its sampling state, incremental detokenization, stop handling and events.

The engine thread is the only writer. Results leave through `sink` as events; the serving layer turns them into
HTTP responses. Text that might be the start of a stop string is held back until it is known not to be one, so
a stop string never reaches the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nim_llm.errors import APIError
from nim_llm.sampling import SamplingParams, TokenLogprob, make_generator, pick_token, token_logprob
from nim_llm.structured import Constraint

# Prompt tokens kept as decoding context, so tokenizers that drop a leading space at the start of a decode
# (SentencePiece) produce the same text incrementally as in one piece.
DETOKENIZE_CONTEXT = 4


@dataclass
class TokenEvent:
    text: str
    logprobs: list[TokenLogprob]


@dataclass
class FinishEvent:
    reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    submitted_s: float
    first_token_s: float | None
    finish_s: float


@dataclass
class ErrorEvent:
    error: APIError


Event = TokenEvent | FinishEvent | ErrorEvent


@dataclass
class Sequence:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    tokenizer: Any
    eos_ids: frozenset[int]
    deadline: float
    device: torch.device
    constraint: Constraint | None = None
    # Take the tokens a grammar forces without a model step each (`structured.Constraint.fast_forward`); only
    # for batches that feed several new tokens of a row in one step.
    fast_forward: bool = False
    output_ids: list[int] = field(default_factory=list)
    cached_outputs: int = 0  # output tokens the batch's KV cache holds (the rest are fed at the next step)
    cancelled: bool = False
    finished: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.generator = make_generator(self.params.seed, self.device)
        self._ids = list(self.prompt_ids[-DETOKENIZE_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._text = ""
        self._emitted = 0
        self._logprobs: list[TokenLogprob] = []
        self._max_stop = max((len(s) for s in self.params.stop), default=0)
        self._eos_index = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=self.device)

    @property
    def next_position(self) -> int:
        """Position id of the last generated token, the one fed to the next decode step."""
        return len(self.prompt_ids) + len(self.output_ids) - 1

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from this sequence's row of logits and record its logprob."""
        allowed = self.constraint.allowed().to(logits.device) if self.constraint else None
        if self.params.ignore_eos and allowed is None:
            allowed = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            allowed[self._eos_index] = False
        token_id = pick_token(logits, self.params, self.generator, allowed)
        if self.constraint is not None:
            remaining_after = self.params.max_tokens - len(self.output_ids) - 1
            token_id = self.constraint.commit(token_id, remaining_after)
        if self.params.logprobs:
            self._logprobs.append(token_logprob(logits, token_id, self.params.top_logprobs))
        return token_id

    def append(self, token_id: int) -> None:
        """Add a chosen token, then any the grammar forces after it; emits text and, when the sequence ends, the
        finish event."""
        self._add(token_id)
        self.take_forced()

    def take_forced(self) -> None:
        """Append the tokens the grammar forces next, when this sequence fast-forwards."""
        if self.finished or not self.fast_forward or self.constraint is None:
            return
        forced = self.constraint.fast_forward()  # already consumed by the grammar, so it may be done already
        for i, token_id in enumerate(forced, start=1):
            self._add(token_id, more=i < len(forced))

    def _add(self, token_id: int, *, more: bool = False) -> None:
        """`more`: further forced tokens follow, so the grammar being done does not end the sequence yet."""
        if self.finished:
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.output_ids.append(token_id)
        if token_id in self.eos_ids:
            self.finish("stop")
            return
        self._text += self._decode_delta(token_id)
        if self._cut_at_stop() or (not more and self.constraint is not None and self.constraint.done):
            self.finish("stop")
        elif len(self.output_ids) >= self.params.max_tokens:
            self.finish("length")
        else:
            self._emit(self._safe_end())

    def finish(self, reason: str) -> None:
        self._emit(len(self._text))
        self.finished = True
        self.sink(
            FinishEvent(
                reason,
                len(self.prompt_ids),
                len(self.output_ids),
                self.submitted_at,
                self.first_token_at,
                time.monotonic(),
            )
        )

    def fail(self, error: APIError) -> None:
        self.finished = True
        self.sink(ErrorEvent(error))

    def _decode_delta(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        # An incomplete UTF-8 sequence decodes to U+FFFD; wait for the token that completes it.
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return after[len(before) :]

    def _cut_at_stop(self) -> bool:
        if not self._max_stop:
            return False
        start = max(0, self._emitted - self._max_stop + 1)
        hits = [i for i in (self._text.find(s, start) for s in self.params.stop) if i >= 0]
        if not hits:
            return False
        self._text = self._text[: min(hits)]
        return True

    def _safe_end(self) -> int:
        """End of the text that cannot be the beginning of a stop string."""
        for keep in range(min(self._max_stop - 1, len(self._text) - self._emitted), 0, -1):
            tail = self._text[-keep:]
            if any(s.startswith(tail) for s in self.params.stop):
                return len(self._text) - keep
        return len(self._text)

    def _emit(self, end: int) -> None:
        if end <= self._emitted and not self._logprobs:
            return
        text = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        logprobs, self._logprobs = self._logprobs, []
        self.sink(TokenEvent(text, logprobs))
