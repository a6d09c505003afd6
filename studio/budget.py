"""Token budgets of LLM calls: how many prompt tokens a request holds and how many answer tokens fit after them.

The studio may talk to any OpenAI-compatible server (ours, vLLM, a NIM), whose context it does not choose. So
every call asks for `min(wanted, context - prompt tokens)` answer tokens. The numbers come, best first, from:

1. `POST {root}/tokenize` (vLLM's endpoint, also served by nim_llm): the exact prompt count and the context;
2. `GET {root}/v1/models` (`max_model_len`, reported by vLLM, NIM and nim_llm) for the context, with a safe upper bound
   on the prompt's tokens (`estimate_prompt_tokens`);
3. neither: the context is unknown and the call asks for `wanted` (the client retries once without `max_tokens`
   when the server says the context is exceeded).

`TokenCounter` remembers which way works for its server and is told to `forget` after a failed call; `fit` turns
a count into the messages to send and their `max_tokens`. `studio/clients.py` makes the calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

# Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM2) map every token to one or more bytes, and
# SentencePiece with byte fallback (Llama 2, Mistral) spells an unknown character as one token per UTF-8 byte,
# so a text never takes more tokens than it has UTF-8 bytes. What the chat template adds is bounded by these:
MESSAGE_OVERHEAD_TOKENS = 8  # role header and end-of-turn markers around each message (Llama 3 and ChatML: 5)
TEMPLATE_OVERHEAD_TOKENS = 128  # BOS, the answer's header and default system text (Llama 3.1's dates: ~25)
NO_ENDPOINT_STATUSES = (404, 405, 501)  # what a server without `/tokenize` answers


@dataclass(frozen=True)
class Count:
    """A prompt's tokens (exact, or an upper bound when `exact` is false) and the served context (None: unknown)."""

    prompt_tokens: int
    context: int | None
    exact: bool

    @property
    def room(self) -> int | None:
        """Answer tokens that fit after the prompt; None when the context is unknown."""
        return None if self.context is None else self.context - self.prompt_tokens


class NoRoom(Exception):
    """Even without history the prompt leaves fewer answer tokens than the call needs (an exact count says so)."""

    def __init__(self, count: Count) -> None:
        super().__init__(f"{count.prompt_tokens} prompt tokens leave no room in a context of {count.context}")
        self.count = count


Counter = Callable[[list[dict[str, Any]]], Awaitable[Count]]


async def fit(
    messages: list[dict[str, Any]], count: Counter, wanted: int, floor: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The messages to send and their max_tokens: `min(wanted, context - prompt)`, or `wanted` when the context is
    unknown. While fewer than `floor` answer tokens fit, the oldest history turn goes; when none is left, `NoRoom`
    (or, when only an upper bound says it does not fit, None: the server knows better)."""
    while True:
        counted = await count(messages)
        room = counted.room
        if room is None:
            return messages, wanted
        if room >= floor:
            return messages, min(wanted, room)
        shorter = without_oldest_turn(messages)
        if shorter is not None:
            messages = shorter
        elif counted.exact:
            raise NoRoom(counted)
        else:
            return messages, None


class TokenCounter:
    """Counts a prompt's tokens the best way its server allows, remembering which way that is."""

    def __init__(
        self, http: httpx.AsyncClient, root: str, headers: dict[str, str], served_name: str, timeout_s: float
    ) -> None:
        self.http = http
        self.root = root.rstrip("/")  # the server's root, without /v1 (`Settings.llm_root`)
        self.headers = headers
        self.served_name = served_name
        self.timeout_s = timeout_s
        self.forget()

    def forget(self) -> None:
        """Ask the server again on the next count (after a failed call: it may have restarted with another model)."""
        self.tokenize: bool | None = None  # does the server count tokens? None: not known, ask it
        self.context: int | None = None  # max_model_len from /v1/models, once read
        self.context_read = False

    async def count(self, messages: list[dict[str, Any]]) -> Count:
        if self.tokenize is not False:
            counted = await self._on_server(messages)
            if counted is not None:
                return counted
        return Count(estimate_prompt_tokens(messages), await self._context(), exact=False)

    async def _on_server(self, messages: list[dict[str, Any]]) -> Count | None:
        """The exact count from `POST {root}/tokenize`; None (noting not to ask again when it has none) otherwise."""
        body = {"model": self.served_name, "messages": messages, "add_generation_prompt": True}
        try:
            r = await self.http.post(self.root + "/tokenize", json=body, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError:
            return None  # estimate this time, ask again next time
        if r.status_code in NO_ENDPOINT_STATUSES:
            self.tokenize = False
            return None
        if r.status_code != 200:
            return None  # busy, loading, or it refused these messages: the call itself will say so
        try:
            counted = tokenize_count(r.json())
        except ValueError:
            counted = None
        self.tokenize = counted is not None
        return counted

    async def _context(self) -> int | None:
        if not self.context_read:
            try:
                r = await self.http.get(self.root + "/v1/models", headers=self.headers, timeout=self.timeout_s)
                if r.status_code == 200:
                    self.context, self.context_read = models_context(r.json(), self.served_name), True
            except (httpx.HTTPError, ValueError):
                pass
        return self.context


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """An upper bound on the tokens of `messages` once templated, for servers that cannot count them."""
    text_bytes = sum(len(str(m.get("role", ""))) + len(str(m.get("content") or "").encode()) for m in messages)
    return text_bytes + MESSAGE_OVERHEAD_TOKENS * len(messages) + TEMPLATE_OVERHEAD_TOKENS


def tokenize_count(body: Any) -> Count | None:
    """The exact count from a `/tokenize` answer (`{"count", "max_model_len", ...}`); None when it is not one."""
    if not isinstance(body, dict) or not _positive_int(body.get("count"), allow_zero=True):
        return None
    context = body.get("max_model_len")
    return Count(body["count"], context if _positive_int(context) else None, exact=True)


def models_context(body: Any, served_name: str) -> int | None:
    """`max_model_len` of the served model in a `/v1/models` answer (the entry named `served_name`, else the
    first); None when the server does not say."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    named = [e for e in entries if isinstance(e, dict) and e.get("id") == served_name]
    entry = named[0] if named else entries[0]
    context = entry.get("max_model_len") if isinstance(entry, dict) else None
    return context if _positive_int(context) else None


def without_oldest_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`messages` less the oldest history turn: its first message and the assistant replies right after it, so
    what is left still starts with a user message. The leading system messages and the last message (the user's
    own) always stay. None when there is no history left to drop."""
    first = 0
    while first < len(messages) - 1 and messages[first].get("role") == "system":
        first += 1
    last = len(messages) - 1
    if first >= last:
        return None
    end = first + 1
    while end < last and messages[end].get("role") == "assistant":
        end += 1
    return messages[:first] + messages[end:]


def context_exceeded(status: int | None, code: object, message: str) -> bool:
    """Whether an error answer says prompt + max_tokens is over the context (OpenAI's and nim_llm's code; vLLM
    says it in words)."""
    return status == 400 and (code == "context_length_exceeded" or "maximum context length" in message)


def _positive_int(value: object, *, allow_zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
