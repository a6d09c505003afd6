"""A left-padded batch of running sequences sharing one KV cache, stepped one token at a time.

Why this design: sequences join (after their own prefill) and leave (finished, cancelled) at any step, which
is continuous batching. Joining pads the shorter side on the left so all rows end at the same column; leaving
selects the remaining rows and trims columns that became padding for every row. Each decode step is then one
forward over all rows with an attention mask (padding masked out) and per-row position ids, so results match
running each sequence alone. Copies happen only on join and leave, not per step. It is correct for any
full-attention decoder in transformers; `slots.SlotBatch` (static cache, compiled CUDA-graphed steps) replaces
this class on GPU behind the same methods.

A step feeds each row every output token its cache does not hold yet: one sampled token, plus the tokens a
grammar forced after it (`Sequence.fast_forward`). Rows with fewer new tokens are padded on the left inside the
step (masked, so the padding is invisible to attention), which keeps all rows ending at the same column.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from nim_llm.sequence import Sequence


def cache_argument(model: Any) -> str:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache`; support both spellings."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output: Any) -> DynamicCache:
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    # keys/values are [batch, heads, length, dim]; pad the length dimension.
    return F.pad(t, (0, 0, n, 0)) if n else t


class PaddedBatch:
    multi_token = True  # a step can feed several new tokens of a row (grammar fast-forward)

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_arg = cache_argument(model)
        self.seqs: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [batch, length], 1 = real token

    def __len__(self) -> int:
        return len(self.seqs)

    def admit(self, seqs: list[Sequence]) -> Iterator[tuple[Sequence, Callable[[], int]]]:
        """Each new sequence with the function that prefills it alone and picks its first token."""
        for seq in seqs:
            seq.take_forced()  # a grammar's forced opening (`{"key": "`) is prefilled with the prompt
            yield seq, (lambda seq=seq: seq.choose(self.prefill(seq)))

    def pick(self, logits: torch.Tensor) -> list[int | None]:
        """No batched picks here: every sequence chooses from its own row."""
        return [None] * len(self.seqs)

    def prefill(self, seq: Sequence) -> torch.Tensor:
        """Run `seq`'s prompt (and any forced output) alone, join the batch with its cache; returns the logits for
        its next token."""
        ids = torch.tensor([seq.prompt_ids + seq.output_ids], device=self.model.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        seq.cached_outputs = len(seq.output_ids)
        self._join(seq, output_cache(out), torch.ones_like(ids))
        return out.logits[0, -1]

    def step(self) -> torch.Tensor:
        """One decode step for every row; returns logits [batch, vocab]."""
        device = self.model.device
        new = [s.output_ids[s.cached_outputs :] for s in self.seqs]
        width = max(len(n) for n in new)
        ids, mask, positions = [], [], []
        for seq, tokens in zip(self.seqs, new, strict=True):
            pad = width - len(tokens)
            first = len(seq.prompt_ids) + seq.cached_outputs  # position of the row's first new token
            ids.append([tokens[0]] * pad + tokens)
            mask.append([0] * pad + [1] * len(tokens))
            positions.append([first] * pad + list(range(first, first + len(tokens))))
            seq.cached_outputs = len(seq.output_ids)
        ids_t = torch.tensor(ids, device=device)
        positions_t = torch.tensor(positions, device=device)
        assert self.mask is not None
        self.mask = torch.cat([self.mask, torch.tensor(mask, dtype=self.mask.dtype, device=device)], dim=1)
        out = self.model(
            input_ids=ids_t,
            attention_mask=self.mask,
            position_ids=positions_t,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        )
        self.cache = output_cache(out)
        return out.logits[:, -1]

    def remove_finished(self) -> None:
        keep = [i for i, s in enumerate(self.seqs) if not (s.finished or s.cancelled)]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        assert self.mask is not None and self.cache is not None
        rows = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask[rows]
        first = int((self.mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows, :, first:]
            layer.values = layer.values[rows, :, first:]

    def _join(self, seq: Sequence, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.seqs.append(seq)
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            return
        old, new = self.mask.shape[1], mask.shape[1]
        grow_old, grow_new = max(0, new - old), max(0, old - new)
        self.mask = torch.cat([F.pad(self.mask, (grow_old, 0)), F.pad(mask, (grow_new, 0))])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, grow_old), _pad_left(theirs.keys, grow_new)])
            mine.values = torch.cat([_pad_left(mine.values, grow_old), _pad_left(theirs.values, grow_new)])
