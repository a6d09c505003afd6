"""The scheduler: one background thread that continuously batches every running sequence.

Each loop turn: drop cancelled and timed-out sequences (so a disconnect costs at most one more step), admit
waiting sequences into free batch slots (prefill each alone, sample its first token), then run one decode step
for the whole batch and give each row its own sampled token. The HTTP side never touches the model: it submits
a sequence with a `sink` callback and receives events from this thread.

The public surface (`submit`, `cancel`, `running`, `waiting`, `start`, `stop`, `tokenizer`, `max_context`,
`grammars`) is what `serving` relies on. The batch behind the loop is either `batch.PaddedBatch` (eager, any
model, CPU and GPU) or `slots.SlotBatch` (static KV cache, compiled and CUDA-graphed decode; LLM_ENGINE).

On the small-GPU memory profiles the engine shares the GPU with the 3D service through the VRAM lease
(`servicekit/vram_lease.py`): it takes the lease before admitting answers into an empty batch, releases it when the
batch empties, and while the 3D service waits it admits nothing new, so the running answers end and the 3D stage
runs.
The engine never blocks on the lease; queued answers keep their timeouts and can be cancelled while they wait.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import torch

from nim_llm.batch import PaddedBatch
from nim_llm.errors import APIError, internal, timed_out
from nim_llm.sampling import SamplingParams
from nim_llm.sequence import Event, Sequence
from nim_llm.structured import GrammarCache
from servicekit.vram import free_gpu_memory, is_cuda_oom
from servicekit.vram_lease import POLL_S, VramLease

log = logging.getLogger("nim_llm.engine")


class QueueFullError(Exception):
    pass


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int,
        max_queue: int,
        max_context: int,
        request_timeout_s: float,
        idle_wait_s: float,
        grammar_cache_size: int,
        json_max_close_tokens: int,
        model_id: str = "",
        batch: Any = None,
        lease: VramLease | None = None,
        oom_advice: str = "choose a smaller VRAM_PROFILE",
    ) -> None:
        self.model = model.eval()
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_context = max_context
        self.max_token_chars = longest_token_chars(tokenizer)
        self.request_timeout_s = request_timeout_s
        self.idle_wait_s = idle_wait_s
        self.eos_ids = frozenset(eos_token_ids(model, tokenizer))
        self.grammars = GrammarCache(
            tokenizer, logits_size(model), sorted(self.eos_ids), grammar_cache_size, json_max_close_tokens
        )
        self._batch = batch if batch is not None else PaddedBatch(model)
        self._lease = lease
        self.oom_advice = oom_advice
        self._waiting: collections.deque[Sequence] = collections.deque()
        # Every sequence not yet dropped, by id: one being admitted is in neither the queue nor the batch for a
        # moment, and a cancel must reach it too.
        self._live: weakref.WeakValueDictionary[str, Sequence] = weakref.WeakValueDictionary()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="nim-llm-engine", daemon=True)

    # --- the interface serving uses ---------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._batch)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting_for_gpu(self) -> bool:
        """Answers are queued while the 3D service has the GPU (VRAM lease)."""
        return self._lease is not None and self._lease.wanting

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        if self._lease is not None:
            self._lease.want(False)
            self._lease.release()
        # Whoever still waits gets an answer instead of hanging until its own timeout.
        for seq in [*self._waiting, *self._batch.seqs]:
            if not seq.finished:
                seq.fail(internal("The server is shutting down."))

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]) -> str:
        """Queue one sequence; raises QueueFullError when LLM_MAX_QUEUE sequences already wait."""
        constraint = self.grammars.new_constraint(params.grammar) if params.grammar else None
        seq = Sequence(
            id=uuid.uuid4().hex,
            prompt_ids=prompt_ids,
            params=params,
            sink=sink,
            tokenizer=self.tokenizer,
            eos_ids=self.eos_ids,
            deadline=time.monotonic() + self.request_timeout_s,
            device=self.model.device,
            constraint=constraint,
            # Forced tokens skip sampling, so they have no logprobs to report: those requests step one by one.
            fast_forward=getattr(self._batch, "multi_token", False) and not params.logprobs,
        )
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError
            self._waiting.append(seq)
            self._live[seq.id] = seq
            self._wake.notify()
        return seq.id

    def cancel(self, seq_id: str) -> None:
        with self._wake:
            seq = self._live.get(seq_id)
            if seq is not None:
                seq.cancelled = True
            self._wake.notify()

    # --- the loop -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._turn()
                except Exception as err:  # a bad step must not kill the server: fail its sequences, go on
                    log.exception("engine step failed")
                    error = self._failure(err)
                    for seq in self._batch.seqs:
                        seq.fail(error)
                    self._batch.remove_finished()

    def _turn(self) -> None:
        with self._wake:
            if not self._waiting and not len(self._batch):
                self._wake.wait(self.idle_wait_s)
            self._expire_waiting()
            admitted = self._pop_admissible() if self._gpu_turn() else []
            if self._waiting and not admitted and not len(self._batch):
                self._wake.wait(POLL_S)  # the 3D service has the GPU: look again shortly
                return
        self._expire_running()
        for seq, pick in self._batch.admit(admitted):
            self._advance(seq, pick)
        self._batch.remove_finished()
        if len(self._batch):
            logits = self._batch.step()
            tokens = self._batch.pick(logits)
            for row, seq in enumerate(self._batch.seqs):
                token = tokens[row]
                if token is None:
                    self._advance(seq, lambda seq=seq, row=row: seq.choose(logits[row]))
                else:
                    self._advance(seq, lambda token=token: token)
            self._batch.remove_finished()
        if self._lease is not None and not len(self._batch):
            self._lease.release()

    def _gpu_turn(self) -> bool:
        """Whether new answers may join the batch now, as far as the VRAM lease is concerned."""
        lease = self._lease
        if lease is None or not lease.enabled:
            return True
        if not self._waiting:
            lease.want(False)
            return True
        if lease.held:
            return not lease.others_waiting()  # the 3D service waits: finish the running answers, then hand over
        if lease.try_acquire():
            lease.want(False)
            return True
        lease.want(True)
        return False

    def _advance(self, seq: Sequence, pick: Callable[[], int]) -> None:
        if seq.finished or seq.cancelled:  # a grammar can force a whole answer before the first model step
            return
        # A failure that belongs to one sequence (its prompt, its grammar) fails that sequence only.
        try:
            seq.append(pick())
        except Exception as err:
            log.exception("sequence %s failed", seq.id)
            seq.fail(self._failure(err))

    def _failure(self, err: Exception) -> APIError:
        """The error a failed step gives its sequences. Out of GPU memory is survivable: the memory is freed and
        the batch limit halved (the leaner mode), so the next answers fit; the message names the profile to pick."""
        if not is_cuda_oom(err):
            return internal(f"generation failed: {err}")
        free_gpu_memory()
        if self.max_batch_size > 1:
            self.max_batch_size //= 2
            log.warning("out of GPU memory: the batch limit is now %d", self.max_batch_size)
        return internal(f"the GPU ran out of memory while generating; {self.oom_advice}")

    def _pop_admissible(self) -> list[Sequence]:
        admitted = []
        while self._waiting and len(self._batch) + len(admitted) < self.max_batch_size:
            admitted.append(self._waiting.popleft())
        return admitted

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for seq in list(self._waiting):
            if seq.cancelled or now > seq.deadline:
                self._waiting.remove(seq)
                if not seq.cancelled:
                    seq.fail(timed_out(self.request_timeout_s))

    def _expire_running(self) -> None:
        now = time.monotonic()
        for seq in self._batch.seqs:
            if not seq.cancelled and now > seq.deadline:
                seq.fail(timed_out(self.request_timeout_s))
        self._batch.remove_finished()


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the generation config's (often several for chat models) and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else (value or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest entry: no token stands for more characters of text than that
    (byte-level vocabularies spell one character per byte, and text has at most one character per byte)."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def logits_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])
