"""Token shards in, (input, target) windows out.

A shard directory holds `meta.json` and flat little-endian token arrays (`*.bin`). A split is read
into one int64 torch tensor when it fits comfortably in memory (fast: one gather per batch), and
read through `np.memmap` otherwise.

Batches are a pure function of (seed, step): the global batch of step `s` is drawn from an RNG
seeded with (seed, s) (random windows) or is the `s`-th run of consecutive windows (epoch-ordered
packing). The data position saved in a checkpoint is therefore just the step, resume continues the
same stream, and under distributed training every rank computes the same global batch and takes its
own slice, so the loss curve equals the single-process run with the same global batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import DataError

PRELOAD_MAX_BYTES = 4 << 30  # a split larger than this (as int64) is read through memmap


@dataclass
class ShardMeta:
    dir: Path
    dtype: str
    vocab_size: int
    eos_id: int | None
    tokenizer_sha256: str | None
    splits: dict[str, Any]

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.dir / "tokenizer.json"
        return path if path.is_file() else None


def read_meta(data_dir: str | Path | None) -> ShardMeta:
    if data_dir is None:
        raise DataError("no token shards given (pass a shard directory or set train.data)")
    path = Path(data_dir)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{path}: not a token-shard directory (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: unreadable ({exc})") from None
    dtype = meta.get("dtype")
    if dtype not in ("uint16", "uint32"):
        raise DataError(f"{meta_path}: dtype must be uint16 or uint32, got {dtype!r}")
    if not isinstance(meta.get("splits"), dict) or not isinstance(meta.get("vocab_size"), int):
        raise DataError(f"{meta_path}: missing 'splits' or 'vocab_size'")
    return ShardMeta(
        dir=path,
        dtype=dtype,
        vocab_size=int(meta["vocab_size"]),
        eos_id=meta.get("eos_id"),
        tokenizer_sha256=meta.get("tokenizer_sha256"),
        splits=meta["splits"],
    )


class TokenSplit:
    """One split's tokens as a single virtual 1-D array (shard files concatenated)."""

    def __init__(self, meta: ShardMeta, split: str, preload_max_bytes: int = PRELOAD_MAX_BYTES) -> None:
        info = meta.splits.get(split)
        if not info or not info.get("files"):
            raise DataError(f"{meta.dir}: no '{split}' split in meta.json")
        self.name = split
        arrays = []
        for entry in info["files"]:
            file = meta.dir / entry["name"]
            if not file.is_file():
                raise DataError(f"{file}: shard file missing")
            itemsize = np.dtype(meta.dtype).itemsize
            if file.stat().st_size % itemsize:
                raise DataError(f"{file}: size is not a multiple of {itemsize} bytes (truncated shard?)")
            if file.stat().st_size == 0:
                continue
            arrays.append(np.memmap(file, dtype=meta.dtype, mode="r"))
        self.num_tokens = int(sum(len(a) for a in arrays))
        self._memmaps = arrays
        self._starts = np.cumsum([0] + [len(a) for a in arrays])
        self.tensor: torch.Tensor | None = None
        if self.num_tokens * 8 <= preload_max_bytes:
            flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=meta.dtype)
            self.tensor = torch.from_numpy(flat.astype(np.int64))

    def max_id(self) -> int | None:
        """The largest token id (only for preloaded splits; None when it would need a full scan)."""
        if self.tensor is None or self.tensor.numel() == 0:
            return None
        return int(self.tensor.max())

    def windows(self, offsets: np.ndarray, length: int) -> torch.Tensor:
        """Rows of `length` consecutive tokens starting at each offset, as int64 [len(offsets), length]."""
        if self.tensor is not None:
            index = torch.from_numpy(offsets.astype(np.int64))[:, None] + torch.arange(length)
            return self.tensor[index]
        rows = [self._read(int(o), length) for o in offsets]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def _read(self, start: int, length: int) -> np.ndarray:
        parts = []
        end = start + length
        for i, arr in enumerate(self._memmaps):
            lo, hi = int(self._starts[i]), int(self._starts[i + 1])
            if hi <= start or lo >= end:
                continue
            parts.append(arr[max(start, lo) - lo : min(end, hi) - lo])
        return np.concatenate(parts)


def check_split_length(split: TokenSplit, block_size: int) -> None:
    if split.num_tokens < block_size + 1:
        raise DataError(
            f"the '{split.name}' split has {split.num_tokens} tokens, fewer than block_size+1 = "
            f"{block_size + 1}; lower model.block_size or add data"
        )


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


class BatchSampler:
    """The global batch of windows for each optimizer step, a pure function of (seed, step).

    `random`: `batch_size` windows at uniformly random offsets, drawn from an RNG seeded with
    (seed, step). `sequential`: the data cut into consecutive non-overlapping windows, taken in
    order, epoch after epoch (the cursor is step * batch_size windows).
    """

    def __init__(self, split: TokenSplit, block_size: int, batch_size: int, seed: int, mode: str) -> None:
        if mode not in ("random", "sequential"):
            raise DataError(f"unknown sampling mode '{mode}'")
        self.split = split
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self.num_windows = (split.num_tokens - 1) // block_size  # sequential packing

    def offsets(self, step: int) -> np.ndarray:
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, step])
            return rng.integers(0, self.split.num_tokens - self.block_size, size=self.batch_size)
        first = step * self.batch_size
        index = (first + np.arange(self.batch_size)) % self.num_windows
        return index * self.block_size

    def epoch(self, step: int) -> float:
        """Passes over the split so far (sequential: exact; random: expected tokens / split size)."""
        return step * self.batch_size * self.block_size / max(1, self.split.num_tokens)

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.split.windows(self.offsets(step), self.block_size + 1)
        return rows[:, :-1], rows[:, 1:]

    def rank_micro_batches(
        self, step: int, rank: int, world_size: int, micro_batch_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice of the global batch, cut into micro-batches."""
        x, y = self.global_batch(step)
        part = rank_slice(self.batch_size, rank, world_size)
        x, y = x[part], y[part]
        return [
            (x[i : i + micro_batch_size], y[i : i + micro_batch_size])
            for i in range(0, x.shape[0], micro_batch_size)
        ]

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"mode": self.mode, "seed": self.seed, "batch_size": self.batch_size, "cursor": step}


def eval_offsets(split: TokenSplit, block_size: int, count: int) -> np.ndarray:
    """`count` fixed windows spread evenly over the split (the same every evaluation and every run)."""
    last = split.num_tokens - block_size - 1
    return np.linspace(0, last, num=count).round().astype(np.int64)
