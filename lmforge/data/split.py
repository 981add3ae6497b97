"""Deterministic train/val/test assignment, after dedup, with the document as the unit.

A short document goes whole to one split, chosen by a seeded hash of its text: the same text lands in the
same split on every run and in any order, and nothing has to be held in memory to decide. A long document
(at least `contiguous_min_chars`, e.g. a novel or tiny-shakespeare) is cut into contiguous ranges instead:
the first part to train, then val, then test, cut at int(n * train_fraction) characters as nanoGPT does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from lmforge.config import SplitConfig
from lmforge.data.documents import SPLITS
from lmforge.data.steps import Doc, Step
from lmforge.errors import ConfigError


class Splitter(Step):
    """Sets `doc.split`; cuts long documents into contiguous pieces (so it may yield more than it takes)."""

    name = "split"

    def __init__(self, cfg: SplitConfig, seed: int, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        for key in ("val", "test"):
            value = getattr(cfg, key)
            if not 0 <= value < 1:
                raise ConfigError(f"data.split.{key} must be in [0, 1), got {value}")
        if cfg.val + cfg.test >= 1:
            raise ConfigError(f"data.split.val + data.split.test must be below 1, got {cfg.val + cfg.test}")
        self.cfg = cfg
        # round(): 1 - 0.2 - 0.1 is 0.7000000000000001 in floating point, and the cut must be int(n * 0.7).
        self.fractions = {"train": round(1 - cfg.val - cfg.test, 12), "val": cfg.val, "test": cfg.test}
        self.splits = [s for s in SPLITS if self.fractions[s] > 0]
        self._key = str(seed).encode()

    def assign(self, text: str) -> str:
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=self._key).digest()
        u = int.from_bytes(digest, "little") / 2**64
        if u < self.fractions["train"]:
            return "train"
        return "val" if u < self.fractions["train"] + self.fractions["val"] or self.cfg.test == 0 else "test"

    def cut(self, doc: Doc) -> list[Doc]:
        n = len(doc.text)
        a = int(n * self.fractions["train"])
        b = n if self.cfg.test == 0 else int(n * round(self.fractions["train"] + self.cfg.val, 12))
        pieces = []
        for split, lo, hi in (("train", 0, a), ("val", a, b), ("test", b, n)):
            if hi > lo:
                fields = {**doc.fields, "chars": [lo, hi]}  # where in the source document this piece lies
                pieces.append(Doc(doc.text[lo:hi], doc.source, fields, doc.text_fields, split))
        return pieces

    def __call__(self, docs: Iterable[Doc]) -> Iterator[Doc]:
        for doc in docs:
            self.count_in(doc)
            if len(doc.text) >= self.cfg.contiguous_min_chars and len(self.splits) > 1:
                pieces = self.cut(doc)
                self.stats.counters["contiguous_docs"] += 1
            else:
                doc.split = self.assign(doc.text)
                pieces = [doc]
            for piece in pieces:
                self.stats.counters[f"{piece.split}_docs"] += 1
                self.stats.counters[f"{piece.split}_chars"] += len(piece.text)
                self.count_out(piece)
                yield piece
