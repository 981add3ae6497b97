"""Batches of fine-tuning rows, a pure function of (seed, step), as the pretraining sampler.

A row is whatever the task's collate function turns into tensors (an SFT example, a packed run of them,
a text and its label). Epoch `e` visits the rows in the order of a permutation drawn from an RNG seeded
with (seed, e); the global batch of step `s` is rows `s * batch_size ...` of that endless sequence. The
data position in a checkpoint is therefore just the step, and every rank computes the same global batch
and takes its own slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from lmforge.train.data import rank_slice
from lmforge.train.loop import MicroBatch

Row = TypeVar("Row")


class RowSampler(Generic[Row]):
    def __init__(self, rows: Sequence[Row], batch_size: int, seed: int,
                 collate: Callable[[list[Row]], MicroBatch]) -> None:  # fmt: skip
        if not rows:
            raise ValueError("no training rows")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.collate = collate
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.rows)))
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
                "rows": len(self.rows)}  # fmt: skip
