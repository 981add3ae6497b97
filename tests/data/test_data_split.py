"""Train/val/test assignment: deterministic, disjoint, and nanoGPT's contiguous cut for long documents."""

from __future__ import annotations

import pytest

from lmforge.config import SplitConfig
from lmforge.data.split import Splitter
from lmforge.data.steps import Doc
from lmforge.errors import ConfigError


def assign(texts: list[str], seed: int = 1337, **cfg: object) -> list[str | None]:
    step = Splitter(SplitConfig(**cfg), seed)  # type: ignore[arg-type]
    return [d.split for d in step(Doc(t, f"t:{i}") for i, t in enumerate(texts))]


def test_hash_split_is_deterministic_order_free_and_seeded() -> None:
    texts = [f"document number {i}" for i in range(4000)]
    first = assign(texts, val=0.1, test=0.1)
    assert first == assign(texts, val=0.1, test=0.1)
    by_text = dict(zip(texts, first))
    reversed_run = assign(texts[::-1], val=0.1, test=0.1)
    assert all(by_text[t] == s for t, s in zip(texts[::-1], reversed_run))  # order does not matter
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 3000 < counts["train"] < 3400 and 300 < counts["val"] < 500 and 300 < counts["test"] < 500
    assert assign(texts, seed=7, val=0.1, test=0.1) != first


def test_contiguous_cut_like_nanogpt() -> None:
    text = "".join(chr(97 + i % 26) for i in range(1001))
    step = Splitter(SplitConfig(val=0.1, contiguous_min_chars=1000), seed=1)
    pieces = list(step([Doc(text, "t:1")]))
    assert [(p.split, p.text) for p in pieces] == [("train", text[:900]), ("val", text[900:])]
    assert pieces[0].fields["chars"] == [0, 900]
    step = Splitter(SplitConfig(val=0.2, test=0.1, contiguous_min_chars=1000), seed=1)
    pieces = list(step([Doc(text, "t:1")]))
    assert [p.split for p in pieces] == ["train", "val", "test"]
    assert "".join(p.text for p in pieces) == text and len(pieces[0].text) == int(1001 * 0.7)
    assert step.stats.docs_in == 1 and step.stats.docs_out == 3 and step.stats.chars_out == 1001


def test_bad_ratios() -> None:
    with pytest.raises(ConfigError, match="below 1"):
        Splitter(SplitConfig(val=0.6, test=0.5), seed=1)
    with pytest.raises(ConfigError, match=r"data.split.val must be in \[0, 1\)"):
        Splitter(SplitConfig(val=-0.1), seed=1)
