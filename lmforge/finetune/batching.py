"""Batches of fine-tuning rows, a pure function of (seed, step), as the pretraining sampler.

A row is whatever the task's collate function turns into tensors (an SFT example, a packed run of them,
a text and its label). Epoch `e` visits the rows in the order of a permutation drawn from an RNG seeded
with (seed, e); the global batch of step `s` is rows `s * batch_size ...` of that endless sequence. The
data position in a checkpoint is therefore just the step, and every rank computes the same global batch
and takes its own slice.

With row lengths given (`finetune.group_by_length`), each epoch's permutation is then arranged so that a
batch holds rows of similar length, as transformers' Trainer does: within every run of 64 batches' worth of
the shuffled rows, the rows are sorted by length and cut into batches, and the epoch's batches are
shuffled. A batch padded to its longest row then carries little padding - on short texts of very different
lengths (SST-2's phrases: 1 to 50+ tokens) most of the arithmetic of a random batch is padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from lmforge.train.data import rank_slice
from lmforge.train.loop import MicroBatch

Row = TypeVar("Row")


GROUP_BATCHES = 64  # batches per run of rows sorted by length (the larger, the less padding, the less random)


class RowSampler(Generic[Row]):
    def __init__(self, rows: Sequence[Row], batch_size: int, seed: int,
                 collate: Callable[[list[Row]], MicroBatch], lengths: Sequence[int] | None = None) -> None:  # fmt: skip
        if not rows:
            raise ValueError("no training rows")
        if lengths is not None and len(lengths) != len(rows):
            raise ValueError(f"{len(lengths)} lengths for {len(rows)} rows")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.collate = collate
        self.lengths = None if lengths is None else np.asarray(lengths)
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.rows))
            if self.lengths is not None:
                perm = group_by_length(perm, self.lengths, self.batch_size, rng)
            self._perm = (epoch, perm)
        return self._perm[1]

    def indices(self, step: int) -> list[int]:
        """The rows of step `step`'s global batch."""
        n = len(self.rows)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(k, n)
            out.append(int(self._permutation(epoch)[pos]))
        return out

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch_size: int
                           ) -> list[MicroBatch]:  # fmt: skip
        mine = self.indices(step)[rank_slice(self.batch_size, rank, world_size)]
        return [
            self.collate([self.rows[i] for i in mine[j : j + micro_batch_size]])
            for j in range(0, len(mine), micro_batch_size)
        ]

    def epoch(self, step: int) -> float:
        return step * self.batch_size / len(self.rows)

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"mode": "rows", "seed": self.seed, "batch_size": self.batch_size, "cursor": step,
                "rows": len(self.rows), "group_by_length": self.lengths is not None}  # fmt: skip


def group_by_length(perm: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """`perm` rearranged so that each batch of `batch_size` consecutive rows has similar lengths: runs of
    GROUP_BATCHES batches sorted longest first, then the whole batches shuffled (a trailing partial batch
    stays last)."""
    perm = perm.copy()
    run = batch_size * GROUP_BATCHES
    for start in range(0, len(perm), run):
        part = perm[start : start + run]
        perm[start : start + run] = part[np.argsort(-lengths[part], kind="stable")]
    whole = len(perm) // batch_size * batch_size
    batches = perm[:whole].reshape(-1, batch_size)[rng.permutation(whole // batch_size)]
    return np.concatenate([batches.reshape(-1), perm[whole:]])
