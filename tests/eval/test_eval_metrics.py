"""Metric functions against the references: scikit-learn for classification, sacrebleu for BLEU/chrF."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from lmforge.errors import DataError
from lmforge.eval import metrics


def random_labels(seed: int, n: int, classes: list[str], skew: float = 0.7) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    y_true = [rng.choice(classes) for _ in range(n)]
    y_pred = [t if rng.random() < skew else rng.choice(classes) for t in y_true]
    return y_true, y_pred


@pytest.mark.parametrize(
    ("seed", "classes"), [(0, ["neg", "pos"]), (1, ["a", "b", "c", "d"]), (2, list("xyz"))]
)
def test_classification_metrics_equal_sklearn(seed: int, classes: list[str]) -> None:
    y_true, y_pred = random_labels(seed, 200, classes)
    labels = [*classes, "never"]  # a class with no examples and no predictions: zero_division=0
    ours = metrics.classification_metrics(y_true, y_pred, labels)

    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert ours["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=labels).tolist()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        row = ours["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i]), abs=1e-12
        )
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        assert ours[f"{avg}_precision"] == pytest.approx(p, abs=1e-12)
        assert ours[f"{avg}_recall"] == pytest.approx(r, abs=1e-12)
        assert ours[f"{avg}_f1"] == pytest.approx(f, abs=1e-12)


def test_classification_edge_cases() -> None:
    # A class predicted but never right, another never predicted: zeros, not NaN.
    y_true, y_pred = ["a", "a", "b"], ["b", "b", "b"]
    ours = metrics.classification_metrics(y_true, y_pred, ["a", "b"])
    *_, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=["a", "b"], zero_division=0)
    assert [ours["per_class"][c]["f1"] for c in "ab"] == pytest.approx(list(f))
    assert ours["macro_f1"] == pytest.approx(f.mean())
    with pytest.raises(DataError, match="example 2: prediction 'z' is not one of the known classes"):
        metrics.classification_metrics(["a", "b"], ["a", "z"], ["a", "b"])
    with pytest.raises(DataError, match="empty"):
        metrics.classification_metrics([], [], ["a"])
    with pytest.raises(DataError, match="2 gold labels but 1 predictions"):
        metrics.accuracy(["a", "b"], ["a"])


HYPS = [
    "A man in an orange hat staring at something.",
    "A girl in karate uniform breaks a board with a kick.",
    "Five people in winter jackets and helmets stand in the snow.",
    "",
    "People are fixing the roof of a house.",
]
REFS = [
    "A man with an orange hat staring at something.",
    "A girl in a karate uniform breaking a stick with a front kick.",
    "Five people wearing winter jackets and helmets stand in the snow, with snowmobiles in the background.",
    "Men are playing soccer.",
    "People are fixing the roof of a house.",
]
ZH_HYPS = ["我们明天去公园。", "今天天气很好", "他不喜欢吃苹果。"]
ZH_REFS = ["我们明天去公园散步。", "今天天气很好。", "他喜欢吃苹果。"]


@pytest.mark.parametrize(
    ("hyps", "refs", "tokenize"),
    [(HYPS, REFS, "13a"), (ZH_HYPS, ZH_REFS, "zh"), (HYPS, REFS, "intl"), (ZH_HYPS, ZH_REFS, "char")],
)
def test_bleu_chrf_equal_sacrebleu(hyps: list[str], refs: list[str], tokenize: str) -> None:
    ours = metrics.bleu(hyps, refs, tokenize)
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize)
    assert ours["score"] == pytest.approx(ref.score, abs=1e-9)
    assert ours["precisions"] == pytest.approx(ref.precisions)
    assert f"tok:{tokenize}" in ours["signature"]
    assert metrics.chrf(hyps, refs)["score"] == pytest.approx(
        sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9
    )
    for h, r in zip(hyps, refs):
        want = sacrebleu.sentence_bleu(h, [r], tokenize=tokenize).score
        assert metrics.sentence_bleu(h, r, tokenize) == pytest.approx(want, abs=1e-9)


def test_zh_tokenizer_matters_for_chinese() -> None:
    # Without word boundaries, 13a sees each Chinese sentence as one token; 'zh' splits characters.
    assert metrics.bleu(ZH_HYPS, ZH_REFS, "zh")["score"] > metrics.bleu(ZH_HYPS, ZH_REFS, "13a")["score"]


def test_exact_match_and_errors() -> None:
    assert metrics.exact_match(HYPS, REFS) == pytest.approx(1 / 5)
    assert metrics.exact_match([" a "], ["a"]) == 1.0
    assert metrics.exact_match([" a "], ["a"], strip=False) == 0.0
    with pytest.raises(DataError, match="unknown BLEU tokenizer"):
        metrics.bleu(["a"], ["a"], "moses")
    with pytest.raises(DataError, match="empty"):
        metrics.bleu([], [])


def test_lm_metrics() -> None:
    nll, tokens, n_bytes = 1234.5, 500, 2000
    m = metrics.lm_metrics(nll, tokens, n_bytes, n_words=400)
    assert m["loss"] == pytest.approx(nll / tokens)
    assert m["perplexity"] == pytest.approx(math.exp(nll / tokens))
    assert m["bits_per_byte"] == pytest.approx(nll / tokens * tokens / n_bytes / math.log(2))
    assert m["word_perplexity"] == pytest.approx(math.exp(nll / 400))
    assert metrics.perplexity(1e6, 1) == math.inf
    with pytest.raises(DataError):
        metrics.lm_metrics(0.0, 0, 10)
