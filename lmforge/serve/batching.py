"""Continuous batching: one engine thread decodes every running sequence together, one token per step.

    engine = Engine(decoder, tokenizer, max_batch_size=16, max_queue=64)
    engine.start()
    seq = engine.sequence(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0), eos_ids={eos}, sink=q.put)
    engine.submit([seq])          # EngineFull when the queue is full, EngineClosed after stop()
    ...                           # q receives StreamEvents; the one with a finish_reason is the last
    engine.stop()                 # finishes what is running and queued, then the thread ends

Between two decode steps the scheduler retires finished and cancelled sequences (their KV-cache rows are
freed at once), then admits waiting ones while rows are free and the prefill budget lasts: their prompts are
prefilled together and join the running batch, so a new request never waits for a whole batch to finish.
Each step then feeds every running row its last token through the decoder (lmforge/serve/backends.py) and
samples the next one.

Sampling reuses lmforge.infer.generate: `sample_next` for each group of rows that share their sampling
parameters (one call per group), and per row for a row with its own seed (its own torch.Generator, so its
samples do not depend on what else is in the batch) or a repetition penalty. Text, stop strings and finish
reasons come from generate's row state (`IncrementalDetokenizer` underneath), so a served completion is
the completion `generate` gives.

Events go out once per step through `notify` (the server hands them to its event loop in one call).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmforge.errors import LmforgeError
from lmforge.infer.generate import RowState, RowText, SamplingParams, StreamEvent, sample_next

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.serve.backends import BatchDecoder

log = logging.getLogger("lmforge")


class EngineFull(LmforgeError):
    """No free row and the waiting queue is full: the server answers 429."""


class EngineClosed(LmforgeError):
    """The engine is stopping (or stopped): the server answers 503."""


@dataclass
class Failure:
    """The last event of a sequence the engine could not finish (a failed step, an aborted shutdown)."""

    message: str
    finish_reason: None = None


Event = StreamEvent | Failure
_ids = itertools.count(1)


class Generation:
    """One sequence being generated: its prompt, sampling parameters and limits, its progress (generate's row
    state: tokens, text, finish reason), and `sink`, where its events go."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, eos_ids: Iterable[int],
                 max_new_tokens: int, sink: Callable[[Event], Any], tokenizer: Tokenizer) -> None:  # fmt: skip
        self.id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.eos_ids = set(eos_ids)
        self.max_new_tokens = max_new_tokens
        self.sink = sink
        self.row = RowState(self.prompt_ids, RowText(tokenizer, params.stop))
        self.generator: torch.Generator | None = None  # made at admission (on the decoder's device)
        self.seen: Tensor | None = None  # (1, vocab) tokens seen, for a repetition penalty
        self.pending: int | None = None  # the sampled token not yet fed to the model
        self.cancelled = False
        self.done = False  # finished, cancelled or failed: the engine no longer touches it
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    @property
    def text(self) -> str:
        return self.row.text.text if self.row.text is not None else ""

    @property
    def token_ids(self) -> list[int]:
        return self.row.token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.row.finish_reason

    def __repr__(self) -> str:
        return f"Generation(id={self.id}, prompt={len(self.prompt_ids)} tokens, new={len(self.token_ids)})"


@dataclass
class EngineStats:
    waiting: int
    running: int
    max_running: int  # the largest batch decoded so far
    steps: int  # decode steps
    step_rows: int  # rows over all decode steps (steps x batch size)
    prefills: int  # prefill calls (each admits one or more sequences)
    prompt_tokens: int  # prefilled
    generated_tokens: int  # sampled
    finished: int
    cancelled: int
    failed: int
    rejected: int  # EngineFull
    alive: bool  # the engine thread runs


def _group_key(params: SamplingParams) -> tuple[Any, ...]:
    if params.greedy:
        return ("greedy",)
    return (params.temperature, params.top_k or 0, params.top_p, params.min_p)


def sample_rows(logits: Tensor, seqs: Sequence[Generation]) -> list[int]:
    """The next token of every row: one `sample_next` per group of rows with the same sampling parameters,
    and one per row that has its own generator (a seed) or a repetition penalty."""
    n = len(seqs)
    chosen = [0] * n
    groups: dict[tuple[Any, ...], list[int]] = {}
    single: list[int] = []
    for i, seq in enumerate(seqs):
        if seq.generator is not None or seq.seen is not None:
            single.append(i)
        else:
            groups.setdefault(_group_key(seq.params), []).append(i)
    for rows in groups.values():
        part = logits if len(rows) == n else logits[rows]
        for i, token in zip(rows, sample_next(part, seqs[rows[0]].params).tolist()):
            chosen[i] = token
    for i in single:
        seq = seqs[i]
        chosen[i] = int(sample_next(logits[i : i + 1], seq.params, seq.seen, seq.generator)[0])
    return chosen


class Engine:
    """The scheduler and its decode thread over one `BatchDecoder`."""

    def __init__(self, decoder: BatchDecoder, tokenizer: Tokenizer, *, max_batch_size: int | None = None,
                 max_queue: int = 64, max_prefill_tokens: int = 2048,
                 notify: Callable[[list[tuple[Generation, Event]]], None] | None = None) -> None:  # fmt: skip
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.block_size: int = decoder.block_size  # type: ignore[attr-defined]
        self.max_batch_size = min(max_batch_size or decoder.max_batch_size, decoder.max_batch_size)
        if self.max_batch_size < 1 or max_queue < 0 or max_prefill_tokens < 1:
            raise LmforgeError("serve: max_batch_size and max_prefill_tokens must be at least 1, max_queue at least 0")
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.notify = notify or _deliver
        self._cv = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []  # in the decoder's row order
        self._closed = False  # no more submissions
        self._abort = False  # fail whatever is left and end
        self._thread: threading.Thread | None = None
        self._max_running = self._steps = self._step_rows = self._prefills = 0
        self._prompt_tokens = self._generated = self._finished = self._cancelled = self._failed = 0
        self._rejected = 0

    # -- the server's side -----------------------------------------------------------------------------

    def sequence(self, prompt_ids: Sequence[int], params: SamplingParams, eos_ids: Iterable[int],
                 sink: Callable[[Event], Any]) -> Generation:  # fmt: skip
        """A sequence for `submit`: at most params.max_new_tokens new tokens, and never past the context."""
        if not 1 <= len(prompt_ids) < self.block_size:
            raise LmforgeError(f"a prompt must have 1 to {self.block_size - 1} tokens, got {len(prompt_ids)}")
        room = self.block_size - len(prompt_ids) + 1  # the last token is sampled, never fed back
        eos = set() if params.ignore_eos else set(eos_ids) | set(params.stop_token_ids)
        return Generation(prompt_ids, params, eos, min(params.max_new_tokens, room), sink, self.tokenizer)

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, seqs: Sequence[Generation]) -> None:
        """Queue sequences, all or none: EngineFull when they do not fit in the free rows plus the queue."""
        with self._cv:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if self._thread is None or not self._thread.is_alive():
                raise EngineClosed("the engine is not running")
            free = self.max_batch_size - len(self._running)
            if len(self._waiting) + len(seqs) > self.max_queue + max(free, 0):
                self._rejected += 1
                raise EngineFull(f"the server is busy ({len(self._running)} running, {len(self._waiting)} "
                                 f"waiting); try again later")  # fmt: skip
            now = time.perf_counter()
            for seq in seqs:
                seq.submitted_at = now
                self._waiting.append(seq)
            self._cv.notify()

    def cancel(self, seq: Generation) -> None:
        """Forget a sequence (its client went away): a queued one at once, a running one before the next
        step (its row is freed then). No more events come for it."""
        with self._cv:
            if seq.done:
                return
            seq.cancelled = True
            if seq in self._waiting:
                self._waiting.remove(seq)
                seq.done = True
                self._cancelled += 1

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new sequences, let the queued and running ones finish (up to `timeout` seconds; then they
        fail), end the thread. True when everything finished."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        with self._cv:
            self._abort = True
            self._cv.notify_all()
        self._thread.join()
        return False

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=len(self._waiting), running=len(self._running), max_running=self._max_running,
            steps=self._steps, step_rows=self._step_rows, prefills=self._prefills,
            prompt_tokens=self._prompt_tokens, generated_tokens=self._generated, finished=self._finished,
            cancelled=self._cancelled, failed=self._failed, rejected=self._rejected,
            alive=self._thread is not None and self._thread.is_alive(),
        )  # fmt: skip

    # -- the engine thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._running or self._closed):
                    self._cv.wait()
                if self._abort or (self._closed and not self._waiting and not self._running):
                    break
                admitted = self._admissions()
            events: list[tuple[Generation, Event]] = []
            try:
                self._drop_cancelled()
                if admitted:
                    self._prefill(admitted, events)
                if self._running:
                    self._step(events)
            except Exception as exc:  # a failed step fails its sequences, not the server
                log.exception("serve: decode step failed")
                self._fail([*self._running, *(s for s in admitted if not s.done)], f"generation failed: {exc}",
                           events)  # fmt: skip
                self._running.clear()
                self.decoder.reset()
            if events:
                self._notify(events)
        with self._cv:
            left = [*self._running, *self._waiting]
            self._running.clear()
            self._waiting.clear()
        events = []
        self._fail(left, "the server shut down before this request finished", events)
        self.decoder.reset()
        if events:
            self._notify(events)

    def _notify(self, events: list[tuple[Generation, Event]]) -> None:
        try:
            self.notify(events)
        except Exception:  # e.g. the event loop is closed: nobody is listening any more
            log.debug("serve: could not deliver %d events", len(events), exc_info=True)

    def _admissions(self) -> list[Generation]:
        """Waiting sequences to prefill now (called under the lock): while rows are free and the padded
        prompt tokens stay within the prefill budget (always at least one)."""
        free = self.max_batch_size - len(self._running)
        admitted: list[Generation] = []
        longest = 0
        while self._waiting and len(admitted) < free:
            width = max(longest, len(self._waiting[0].prompt_ids))
            if admitted and width * (len(admitted) + 1) > self.max_prefill_tokens:
                break
            admitted.append(self._waiting.popleft())
            longest = width
        return admitted

    def _drop_cancelled(self) -> None:
        gone = [i for i, seq in enumerate(self._running) if seq.cancelled]
        for i in gone:
            self._running[i].done = True
        self._cancelled += len(gone)
        self._retire(gone)

    def _retire(self, rows: list[int]) -> None:
        """Free decoder rows, mirroring the decoder's swap-remove (the last row takes the freed index)."""
        for i in sorted(rows, reverse=True):
            self.decoder.remove(i)
            self._running[i] = self._running[-1]
            self._running.pop()

    def _prefill(self, admitted: list[Generation], events: list[tuple[Generation, Event]]) -> None:
        logits = self.decoder.add([seq.prompt_ids for seq in admitted])
        for seq in admitted:
            params = seq.params
            if params.seed is not None and not params.greedy:
                seq.generator = torch.Generator(device=logits.device).manual_seed(params.seed)
            if params.repetition_penalty != 1.0:
                seq.seen = torch.zeros((1, logits.size(1)), dtype=torch.bool, device=logits.device)
                seq.seen[0, seq.prompt_ids] = True
        start = len(self._running)
        self._running.extend(admitted)
        self._prefills += 1
        self._prompt_tokens += sum(len(seq.prompt_ids) for seq in admitted)
        self._max_running = max(self._max_running, len(self._running))
        tokens = sample_rows(logits, admitted)
        done = [start + j for j, (seq, token) in enumerate(zip(admitted, tokens)) if self._push(seq, token, events)]
        self._retire(done)

    def _step(self, events: list[tuple[Generation, Event]]) -> None:
        running = self._running
        logits = self.decoder.step([seq.pending for seq in running])  # type: ignore[misc]
        self._steps += 1
        self._step_rows += len(running)
        self._max_running = max(self._max_running, len(running))
        tokens = sample_rows(logits, running)
        done = [i for i, (seq, token) in enumerate(zip(running, tokens)) if self._push(seq, token, events)]
        self._retire(done)

    def _push(self, seq: Generation, token: int, events: list[tuple[Generation, Event]]) -> bool:
        """Take a sampled token; True when the sequence is finished."""
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        self._generated += 1
        last = len(seq.row.token_ids) + 1 >= seq.max_new_tokens
        event = seq.row.push(token, seq.eos_ids, last)
        if seq.seen is not None:
            seq.seen[0, token] = True
        seq.pending = token
        if event is not None:
            events.append((seq, event))
        if seq.row.finish_reason is None:
            return False
        seq.done = True
        self._finished += 1
        return True

    def _fail(self, seqs: Iterable[Generation], message: str, events: list[tuple[Generation, Event]]) -> None:
        for seq in seqs:
            if not seq.done and not seq.cancelled:
                events.append((seq, Failure(message)))
                self._failed += 1
            seq.done = True


def _deliver(events: list[tuple[Generation, Event]]) -> None:
    for seq, event in events:
        seq.sink(event)
