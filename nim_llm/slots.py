"""Running sequences in fixed cache slots, stepped by a compiled, CUDA-graphed decode function (the GPU path).

Same interface as `batch.PaddedBatch` (`seqs`, `admit`, `step`, `pick`, `remove_finished`), so the engine's
scheduler is shared. Differences that make it fast:
- the KV cache is preallocated (`llama_step.LlamaStep`); row i is slot i; a leaving sequence's hole is filled
  by moving the last slot into it, so running sequences stay packed in slots 0..n-1;
- new sequences are prefilled together (one left-padded forward of the transformers model) and their
  keys/values copied into their slots;
- each decode step replays a CUDA graph captured ahead, at start-up, for every (batch bucket, span bucket):
  batch sizes are rounded up to 1, 2, 4, ... slots and the attended length to 256, 512, ... slot_tokens, so no
  shape is ever compiled or captured while serving;
- rows with plain sampling are sampled together (`sampling.pick_tokens`); rows with a grammar or logprobs go
  through their sequence's own `choose`, as in the eager engine;
- when every row samples plainly, the next step is queued on the GPU as soon as the tokens are known, before
  the engine detokenizes and checks stops on the CPU; if the rows then change (a sequence ends, one joins),
  that queued step is dropped and the step re-run for the new rows (its cache writes are identical).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from nim_llm.batch import output_cache
from nim_llm.llama_step import LlamaStep
from nim_llm.sampling import pick_tokens
from nim_llm.sequence import Sequence

log = logging.getLogger("nim_llm.slots")

MIN_SPAN = 256
PREFILL_TOKENS = 16384  # most padded prompt tokens in one batched prefill forward


def buckets(start: int, limit: int) -> list[int]:
    """start, 2*start, ... below limit, then limit itself."""
    out, size = [], start
    while size < limit:
        out.append(size)
        size *= 2
    return [*out, limit]


def bucket_for(value: int, sizes: list[int]) -> int:
    return next(size for size in sizes if size >= value)


class SlotBatch:
    def __init__(self, model: Any, *, slots: int, slot_tokens: int, compile: bool, cuda_graphs: bool) -> None:
        self.model = model
        self.step_fn = LlamaStep(model, slots, slot_tokens, compile)
        self.batch_sizes = buckets(1, slots)
        self.spans = buckets(min(MIN_SPAN, slot_tokens), slot_tokens)
        self.cuda_graphs = cuda_graphs
        self.seqs: list[Sequence] = []
        device = model.device
        self._inputs = torch.zeros(2, slots, dtype=torch.long, device=device)  # token ids, positions
        self._ids, self._pos = self._inputs[0], self._inputs[1]
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._eos: torch.Tensor | None = None
        self._launched: tuple[list[Sequence], torch.Tensor] | None = None  # a step `pick` queued ahead

    def __len__(self) -> int:
        return len(self.seqs)

    # --- start-up ------------------------------------------------------------------------------------------
    def warm_up(self) -> float:
        """Compile and (on CUDA) capture every (batch, span) shape; returns the seconds it took."""
        start = time.perf_counter()
        with torch.inference_mode():
            shapes = [(b, s) for b in reversed(self.batch_sizes) for s in reversed(self.spans)]
            if not self.cuda_graphs:
                self.step_fn.forward(self._ids[:1], self._pos[:1], self.spans[0])
                return time.perf_counter() - start
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for b, span in shapes:  # compile (first shapes) and run every shape once before capture
                    self.step_fn.forward(self._ids[:b], self._pos[:b], span)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            pool = torch.cuda.graph_pool_handle()
            for b, span in shapes:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self.step_fn.forward(self._ids[:b], self._pos[:b], span)
                self._graphs[(b, span)] = (graph, out)
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        log.info("static engine: %d decode shapes ready in %.1fs", len(shapes), elapsed)
        return elapsed

    # --- the engine's interface -----------------------------------------------------------------------------
    def admit(self, seqs: list[Sequence]) -> Iterator[tuple[Sequence, Callable[[], int]]]:
        """Prefill `seqs` into free slots; yields each with the function that picks its first token."""
        for group in self._prefill_groups(seqs):
            try:
                logits = self._prefill(group)
            except Exception as err:  # the group's prompts failed together; each sequence gets the error
                yield from ((seq, _raiser(err)) for seq in group)
                continue
            for row, seq in enumerate(group):
                yield seq, (lambda seq=seq, row=row, logits=logits: seq.choose(logits[row]))

    def step(self) -> torch.Tensor:
        """One decode step for every row; returns logits [rows, vocab] (valid until the next step).

        When `pick` already launched this step (same rows as then), its result is returned; otherwise that
        launch is dropped (its cache writes are the ones this step makes again) and the step runs now."""
        launched, self._launched = self._launched, None
        if launched is not None and _same(launched[0], self.seqs):
            return launched[1]
        return self._launch([s.output_ids[-1] for s in self.seqs], [s.next_position for s in self.seqs])

    def pick(self, logits: torch.Tensor) -> list[int | None]:
        """Tokens for plain-sampling rows, chosen together; None where the sequence must choose itself.

        When every row is plain, the next step is launched right away with these tokens, so the GPU computes
        it while the engine turns the tokens into text (the rows' sequences are appended to after this)."""
        plain = [i for i, s in enumerate(self.seqs) if s.constraint is None and not s.params.logprobs]
        out: list[int | None] = [None] * len(self.seqs)
        if not plain:
            return out
        rows = logits if len(plain) == len(self.seqs) else logits[plain]
        seqs = [self.seqs[i] for i in plain]
        if self._eos is None:
            self._eos = torch.tensor(sorted(seqs[0].eos_ids), dtype=torch.long, device=logits.device)
        tokens = pick_tokens(rows, [s.params for s in seqs], [s.generator for s in seqs], self._eos)
        for i, token in zip(plain, tokens, strict=True):
            out[i] = token
        positions = [s.next_position + 1 for s in self.seqs]
        if len(plain) == len(self.seqs) and max(positions) < self.step_fn.slot_tokens:
            self._launched = (list(self.seqs), self._launch(tokens, positions))
        return out

    def _launch(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Queue the decode step for rows 0..n-1 fed `tokens` at `positions`; returns its logits [n, vocab]."""
        n, last = len(tokens), max(positions)
        if last >= self.step_fn.slot_tokens:
            raise RuntimeError("a sequence outgrew its cache slot (LLM_SLOT_TOKENS)")
        b, span = bucket_for(n, self.batch_sizes), bucket_for(last + 1, self.spans)
        pad = [0] * (b - n)
        self._inputs[:, :b].copy_(torch.tensor([tokens + pad, positions + pad]))
        if (b, span) in self._graphs:
            graph, out = self._graphs[(b, span)]
            graph.replay()
        else:
            out = self.step_fn.forward(self._ids[:b], self._pos[:b], span)
        return out[:n]

    def remove_finished(self) -> None:
        """Drop finished rows, moving the last running slot into each hole so slots stay packed."""
        seqs, i = self.seqs, 0
        while i < len(seqs):
            if not (seqs[i].finished or seqs[i].cancelled):
                i += 1
                continue
            last = len(seqs) - 1
            if last != i:
                self.step_fn.move_slot(last, i, seqs[last].next_position + 1)
                seqs[i] = seqs[last]
            seqs.pop()

    # --- prefill ------------------------------------------------------------------------------------------
    def _prefill_groups(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        group: list[Sequence] = []
        for seq in seqs:
            longest = max([len(s.prompt_ids) for s in group] + [len(seq.prompt_ids)])
            if group and longest * (len(group) + 1) > PREFILL_TOKENS:
                yield group
                group = []
            group.append(seq)
        if group:
            yield group

    def _prefill(self, group: list[Sequence]) -> torch.Tensor:
        """One left-padded forward for `group`; stores each prompt's cache in a new slot; logits [n, vocab]."""
        device = self.model.device
        width = max(len(s.prompt_ids) for s in group)
        pads = [width - len(s.prompt_ids) for s in group]
        ids = torch.tensor([[0] * p + s.prompt_ids for p, s in zip(pads, group, strict=True)], device=device)
        mask = torch.tensor([[0] * p + [1] * (width - p) for p in pads], device=device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        layers = output_cache(out).layers
        for row, (pad, seq) in enumerate(zip(pads, group, strict=True)):
            slot = len(self.seqs)
            self.step_fn.store_prefill(slot, [(x.keys[row, :, pad:], x.values[row, :, pad:]) for x in layers])
            self.seqs.append(seq)
        return out.logits[:, -1]


def _same(a: list[Sequence], b: list[Sequence]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _raiser(err: Exception) -> Callable[[], int]:
    def pick() -> int:
        raise err

    return pick
