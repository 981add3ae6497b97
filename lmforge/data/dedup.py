"""Deduplication: exact (a hash of the normalised text) and near-duplicate (MinHash + LSH banding).

Near-duplicates, vectorised with numpy:
1. shingles: a document (lower-cased, whitespace collapsed) becomes code points (or word hashes); a
   sliding window of `shingle_size` of them is hashed to one uint64 per shingle;
2. signatures: `num_perm` multiply-shift hash functions h_i(x) = (a_i * x + b_i) >> 32 are applied as a
   (num_perm x n_shingles) matrix over a whole batch of documents at once, and `np.minimum.reduceat`
   takes each document's column minimum; long documents are processed in column blocks;
3. LSH: the signature is cut into `bands` bands of num_perm/bands rows; documents sharing a band's
   values are candidates, and a candidate counts only if the signatures agree on at least `threshold`
   of their positions (the MinHash estimate of Jaccard similarity). The first-seen document is kept.

Memory grows with the number of kept documents (a 4*num_perm-byte signature and `bands` bucket
entries each), not with their length.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lmforge.config import DedupConfig
from lmforge.data.clean import count_words, words_of
from lmforge.data.steps import Doc, Filter, Step
from lmforge.errors import ConfigError

_BLOCK = 1 << 13  # shingle columns per block: 8 MB at 128 permutations, cache-friendly (3x faster than 32 MB)
_BATCH_DOCS = 512
_BATCH_CHARS = 1 << 20
_SEED = 0x5EED  # fixed: which documents count as copies should not depend on the run's split seed


def dedup_key(text: str) -> str:
    """What 'the same text' means: case and whitespace differences do not make a document new."""
    return " ".join(text.casefold().split())


class ExactDedup(Filter):
    """Drops a document whose normalised text was seen before (a 16-byte hash per kept document)."""

    name = "exact_dedup"

    def __init__(self, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        self._seen: set[bytes] = set()

    def reject(self, doc: Doc) -> str | None:
        digest = hashlib.blake2b(dedup_key(doc.text).encode("utf-8"), digest_size=16).digest()
        if digest in self._seen:
            return "exact_duplicate"
        self._seen.add(digest)
        return None


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads polynomial shingle hashes over all 64 bits (in place)."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class MinHasher:
    """MinHash signatures of texts, `num_perm` uint32 values each."""

    def __init__(self, num_perm: int, shingle: str, shingle_size: int, seed: int = _SEED) -> None:
        if num_perm < 1 or shingle_size < 1:
            raise ConfigError("data.dedup.num_perm and data.dedup.shingle_size must be at least 1")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.shingle = shingle
        self.size = shingle_size
        # Multiply-shift hashing: odd 64-bit multipliers, the top 32 bits of a*x+b are the hash.
        self.a = (rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)
        self._poly = np.uint64(0x100000001B3)  # FNV prime: the base of the polynomial over a window

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of a batch of texts: (all hashes concatenated as uint64, count per text).

        The texts are joined into one array of units (code points, or word hashes) and hashed with one
        rolling polynomial over a sliding window, so the cost per text is a few numpy calls for the
        whole batch, not per text. Windows that straddle two texts are dropped. A text shorter than the
        shingle size is padded to it, so every text has at least one shingle.
        """
        k = self.size
        pad = "\x00" * k
        normed = [" ".join(t.lower().split()) for t in texts]
        if self.shingle == "word":
            unit_lists = [words_of(t) or [""] for t in normed]
            lengths = np.array([max(len(u), k) for u in unit_lists], dtype=np.int64)
            # A stable hash per word (Python's hash() is salted per process): same text, same signature.
            flat = [w for u in unit_lists for w in (u if len(u) >= k else u + [""] * (k - len(u)))]
            units = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in flat), dtype=np.uint64, count=len(flat))
        else:
            normed = [t if len(t) >= k else (t + pad)[:k] for t in normed]
            lengths = np.array([len(t) for t in normed], dtype=np.int64)
            units = np.frombuffer("".join(normed).encode("utf-32-le"), dtype="<u4").astype(np.uint64)
        windows = sliding_window_view(units, k)  # (n_units - k + 1, k) view, no copy
        h = np.zeros(len(windows), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):  # h = ((u0 * P + u1) * P + u2) ... mod 2**64, one column at a time
                h *= self._poly
                h += windows[:, j]
        doc_of = np.repeat(np.arange(len(texts)), lengths)
        inside = doc_of[: len(h)] == doc_of[k - 1:]  # the window starts and ends in the same text
        return _mix64(h[inside]), lengths - k + 1

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures, computed over the batch's shingles block by block."""
        allsh, counts = self.shingles(texts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        total = len(allsh)
        sig = np.full((self.num_perm, len(texts)), np.iinfo(np.uint64).max, dtype=np.uint64)
        block = np.empty((self.num_perm, min(_BLOCK, total)), dtype=np.uint64)
        a, b = self.a[:, None], self.b[:, None]
        for lo in range(0, total, _BLOCK):
            hi = min(lo + _BLOCK, total)
            cols = block[:, : hi - lo]
            with np.errstate(over="ignore"):
                np.multiply(a, allsh[None, lo:hi], out=cols)
                np.add(cols, b, out=cols)
            np.right_shift(cols, np.uint64(32), out=cols)
            # Documents with shingles in [lo, hi): the one straddling `lo`, then those starting inside.
            first = int(np.searchsorted(starts, lo, side="right")) - 1
            last = int(np.searchsorted(starts, hi, side="left"))  # exclusive
            local = np.maximum(starts[first:last], lo) - lo
            mins = np.minimum.reduceat(cols, local, axis=1)
            np.minimum(sig[:, first:last], mins, out=sig[:, first:last])
        return np.ascontiguousarray(sig.T).astype(np.uint32)


class NearDedup(Step):
    """Drops documents whose MinHash signature agrees with an earlier kept one on >= threshold of rows."""

    name = "near_dedup"

    def __init__(self, cfg: DedupConfig, max_examples: int = 3) -> None:
        super().__init__(max_examples)
        if cfg.num_perm % cfg.bands:
            raise ConfigError(f"data.dedup.num_perm ({cfg.num_perm}) must be a multiple of data.dedup.bands ({cfg.bands})")
        if not 0 < cfg.threshold <= 1:
            raise ConfigError(f"data.dedup.threshold must be in (0, 1], got {cfg.threshold}")
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm, cfg.shingle, cfg.shingle_size)
        self.rows = cfg.num_perm // cfg.bands
        rng = np.random.default_rng(_SEED + 1)
        self._band_mult = rng.integers(0, 1 << 63, self.rows, dtype=np.uint64) | np.uint64(1)
        # One dict for all bands: each band's keys are salted differently, so bands never share a key.
        self._band_salt = rng.integers(0, 1 << 63, cfg.bands, dtype=np.uint64)
        self._index: dict[int, list[int]] = {}
        self._min_agree = int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))  # rows that must agree
        self._sigs = np.empty((1024, cfg.num_perm), dtype=np.uint32)
        self._sources: list[str] = []

    def __call__(self, docs: Iterable[Doc]) -> Iterator[Doc]:
        batch: list[Doc] = []
        chars = 0
        for doc in docs:
            self.count_in(doc)
            if self.cfg.near_min_words and count_words(doc.text) < self.cfg.near_min_words:
                # A phrase of a few words is not a sample of shingles: "good" and "so good" would be
                # near-copies. Short documents are left to exact dedup.
                self.stats.counters["too_short_to_check"] += 1
                self.count_out(doc)
                yield doc
                continue
            batch.append(doc)
            chars += len(doc.text)
            if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield from self._flush(batch)
                batch, chars = [], 0
        if batch:
            yield from self._flush(batch)

    def _band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: each band's rows folded into one number, used as a bucket key."""
        rows = sigs.reshape(len(sigs), self.cfg.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = (rows * self._band_mult).sum(axis=2, dtype=np.uint64) + self._band_salt
        return _mix64(keys)

    def _flush(self, batch: list[Doc]) -> Iterator[Doc]:
        sigs = self.hasher.signatures([d.text for d in batch])
        keys = self._band_keys(sigs).tolist()
        # Sequential on purpose: a copy inside the same batch must find its original already indexed.
        for doc, sig, doc_keys in zip(batch, sigs, keys):
            match = self._find(sig, doc_keys)
            if match is not None:
                kept, agreement = match
                self.removed(doc, "near_duplicate", f"of {self._sources[kept]} (agreement {agreement:.2f})")
                continue
            self._add(sig, doc_keys, doc.source)
            self.count_out(doc)
            yield doc

    def _find(self, sig: np.ndarray, keys: list[int]) -> tuple[int, float] | None:
        hits = [hit for hit in map(self._index.get, keys) if hit is not None]
        if not hits:
            return None
        candidates = set().union(*hits)
        ids = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        agree = np.count_nonzero(self._sigs[ids] == sig, axis=1)
        best = int(np.argmax(agree))
        self.stats.counters["candidates_checked"] += len(ids)
        if agree[best] >= self._min_agree:
            return int(ids[best]), float(agree[best]) / self.cfg.num_perm
        return None

    def _add(self, sig: np.ndarray, keys: list[int], source: str) -> None:
        idx = len(self._sources)
        if idx == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[idx] = sig
        self._sources.append(source)
        index = self._index
        for key in keys:
            bucket = index.get(key)
            if bucket is None:
                index[key] = [idx]
            else:
                bucket.append(idx)
