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


# The seeds torch generators accept; a request's seed is validated against them (`protocol.py`).
MIN_SAMPLER_SEED, MAX_SAMPLER_SEED = -(2**63), 2**64 - 1


def choice_seed(seed: int, index: int) -> int:
    """The seed of a request's choice `index`: seed + index, wrapped into the range the samplers accept."""
    return (seed + index) % 2**64


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


def pick_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator], eos: torch.Tensor
) -> list[int]:
    """One token per row of `logits` [rows, vocab] (no grammar), all rows together with one device sync.

    Sampled rows use the exponential race (argmax of p / E with E ~ Exp(1) drawn from the row's own
    generator), which picks token i with probability p_i, as multinomial does, but for all rows at once.
    """
    logits = logits.float()
    device = logits.device
    rows = torch.tensor([[p.temperature, p.top_p, p.ignore_eos] for p in params], dtype=torch.float32)
    temperature, top_p, ignore_eos = rows.to(device).unbind(1)
    if any(p.ignore_eos for p in params):
        logits = logits.clone()
        logits[:, eos] = logits[:, eos].masked_fill(ignore_eos[:, None] > 0, float("-inf"))
    greedy = torch.argmax(logits, dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0.0]
    if not sampled_rows:
        return greedy.tolist()
    probs = torch.softmax(logits / temperature.clamp_min(1e-6)[:, None], dim=-1)
    if any(p.top_p < 1.0 for p in params):
        probs = _apply_top_p_rows(probs, torch.where(top_p < 1.0, top_p, 2.0))
    noise = torch.ones_like(probs)
    for i in sampled_rows:
        noise[i].exponential_(generator=generators[i])
    sampled = torch.argmax(probs / noise.clamp_min_(1e-20), dim=-1)  # a zero draw must not give 0/0 = NaN
    return torch.where(temperature > 0.0, sampled, greedy).tolist()


def _apply_top_p_rows(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`apply_top_p` for every row with its own threshold (a threshold above 1 keeps the whole row)."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    drop = (cumulative - sorted_probs) >= top_p[:, None]
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
