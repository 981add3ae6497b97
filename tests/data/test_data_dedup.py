"""Exact and MinHash near-duplicate removal."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmforge.config import DedupConfig
from lmforge.data import dedup
from lmforge.data.dedup import ExactDedup, MinHasher, NearDedup
from lmforge.data.steps import Doc
from lmforge.errors import ConfigError

BASE = [
    "the film is a charming and often affecting journey through a small town in the middle of nowhere",
    "a gorgeously strange movie that is as clever as it is disturbing and never lets the viewer relax",
    "an utterly incompetent thriller whose twists can be seen coming from a hundred miles away",
    "this documentary about jazz musicians in new orleans is full of warmth, music and real joy",
]


def edit(text: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for _ in range(n):
        chars[rng.randrange(len(chars))] = rng.choice("xyzq")
    return "".join(chars)


def test_exact_dedup_ignores_case_and_whitespace() -> None:
    step = ExactDedup()
    docs = [Doc("Hello  World\n", "a:1"), Doc("hello world", "b:1"), Doc("hello there", "c:1")]
    assert [d.source for d in step(docs)] == ["a:1", "c:1"]
    assert step.stats.removed_by == {"exact_duplicate": 1}


def test_planted_near_duplicate_removed_distinct_kept_first_seen_wins() -> None:
    docs = [Doc(t, f"orig:{i}") for i, t in enumerate(BASE)]
    docs.insert(2, Doc(edit(BASE[0], 4, seed=1), "copy:0"))  # ~4% of characters changed
    docs.append(Doc(edit(BASE[3], 3, seed=2), "copy:3"))
    step = NearDedup(DedupConfig())
    kept = [d.source for d in step(docs)]
    assert kept == ["orig:0", "orig:1", "orig:2", "orig:3"]
    assert step.stats.removed_by == {"near_duplicate": 2}
    assert "of orig:0" in step.stats.examples[0]["detail"]


def test_short_documents_left_to_exact_dedup() -> None:
    step = NearDedup(DedupConfig())
    docs = [Doc("the horror", "a:1"), Doc("the horrors", "b:1")]
    assert len(list(step(docs))) == 2
    assert step.stats.counters["too_short_to_check"] == 2
    step = NearDedup(DedupConfig(near_min_words=0))
    assert [d.source for d in step(docs)] == ["a:1"]


def reference_signature(hasher: MinHasher, text: str) -> np.ndarray:
    """The same MinHash, one hash function and one shingle at a time (slow, obviously right)."""
    shingles, _ = hasher.shingles([text])
    out = []
    for a, b in zip(hasher.a.tolist(), hasher.b.tolist()):
        out.append(min(((a * int(x) + b) % 2**64) >> 32 for x in shingles.tolist()))
    return np.array(out, dtype=np.uint32)


def test_vectorised_signatures_match_reference_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_BLOCK", 64)  # force documents to straddle column blocks
    hasher = MinHasher(num_perm=16, shingle="char", shingle_size=5)
    texts = [BASE[0], "ab", "", BASE[1] * 3, BASE[2]]
    sigs = hasher.signatures(texts)
    for text, sig in zip(texts, sigs):
        assert np.array_equal(sig, reference_signature(hasher, text))
    alone = np.stack([hasher.signatures([t])[0] for t in texts])
    assert np.array_equal(sigs, alone)  # a document's signature does not depend on its batch


def test_signature_agreement_estimates_jaccard() -> None:
    hasher = MinHasher(num_perm=256, shingle="char", shingle_size=5)
    a, b = BASE[0], BASE[0].replace("charming", "dull")
    sa, sb = hasher.signatures([a, b])

    def shingles(t: str) -> set[str]:
        return {t[i:i + 5] for i in range(len(t) - 4)}

    jaccard = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
    assert abs(float((sa == sb).mean()) - jaccard) < 0.1


def test_word_shingles() -> None:
    step = NearDedup(DedupConfig(shingle="word", shingle_size=3, threshold=0.5))
    docs = [Doc(BASE[0], "a:1"), Doc(BASE[0].replace("charming", "lovely"), "b:1"), Doc(BASE[1], "c:1")]
    assert [d.source for d in step(docs)] == ["a:1", "c:1"]


def test_chinese_near_duplicate() -> None:
    text = "此开卷第一回也。作者自云：因曾历过一番梦幻之后，故将真事隐去，而借通灵之说，撰此石头记一书也。"
    step = NearDedup(DedupConfig())
    docs = [Doc(text, "a:1"), Doc(text.replace("梦幻", "梦境"), "b:1"), Doc(text[::-1], "c:1")]
    assert [d.source for d in step(docs)] == ["a:1", "c:1"]


def test_bad_dedup_config() -> None:
    with pytest.raises(ConfigError, match=r"multiple of data\.dedup\.bands"):
        NearDedup(DedupConfig(num_perm=100, bands=32))
