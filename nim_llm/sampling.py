"""Per-request sampling: the engine-level parameters and the one function that picks the next token.

Each sequence owns a seeded `torch.Generator`, so the same seed and the same request give the same tokens
whatever else is running (up to floating-point differences of batched versus single forwards, which do not
change the argmax/CDF in practice on fp32 CPU runs). Reported logprobs are those of the model's own
distribution (log-softmax of the raw logits), as vLLM reports them, not of the temperature-scaled one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    # A compiled-grammar key from `structured.GrammarCache`; None = free text.
    grammar: str | None = None


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def apply_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of the distribution outside the smallest set whose mass reaches `top_p`."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # Keep a token when the mass before it is still below top_p, so the first token always survives.
    drop = (cumulative - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def pick_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, allowed: torch.Tensor | None
) -> int:
    """One token from a 1-D row of logits, honouring the grammar mask, temperature and top_p."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    probs = apply_top_p(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprob(logits: torch.Tensor, token_id: int, top_n: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if top_n > 0:
        values, ids = torch.topk(logprobs, top_n)
        top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return TokenLogprob(token_id, float(logprobs[token_id]), top)
