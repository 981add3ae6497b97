"""Metrics as pure functions of predictions and references: no model, no files.

- Language modelling: loss (mean NLL per token, nats), perplexity, bits per byte
  (total NLL / (ln 2 x UTF-8 bytes): independent of the tokenizer, so models with different vocabularies
  compare), word perplexity.
- Classification: accuracy; precision, recall and F1 per class, macro- and support-weighted averages; the
  confusion matrix (rows: true class, columns: predicted), all as scikit-learn computes them
  (`precision_recall_fscore_support(..., zero_division=0)`, `confusion_matrix`).
- Generation: corpus BLEU and chrF through sacrebleu (its standard tokenizers: '13a' by default, 'zh' for
  Chinese targets, 'intl', 'char', 'none'), sentence BLEU for error analysis, exact match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmforge.errors import DataError

LN2 = math.log(2.0)
BLEU_TOKENIZERS = ("13a", "zh", "intl", "char", "none", "ja-mecab", "ko-mecab", "flores101", "flores200")

# ---------------------------------------------------------------------------------------------------------
# Language modelling
# ---------------------------------------------------------------------------------------------------------


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean NLL per token); inf when the mean overflows."""
    if n_tokens <= 0:
        raise DataError("perplexity of zero tokens")
    mean = nll_sum / n_tokens
    return math.exp(mean) if mean < 700 else math.inf


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    """Total NLL (nats) over the text's UTF-8 bytes, in bits: nll / (ln 2 x bytes)."""
    if n_bytes <= 0:
        raise DataError("bits per byte of an empty text")
    return nll_sum / (LN2 * n_bytes)


def lm_metrics(nll_sum: float, n_tokens: int, n_bytes: int, n_words: int | None = None) -> dict[str, float]:
    """loss, perplexity, bits_per_byte (and word_perplexity when the word count is known)."""
    if n_tokens <= 0:
        raise DataError("nothing to score: the evaluation set has no tokens")
    out = {
        "loss": nll_sum / n_tokens,
        "perplexity": perplexity(nll_sum, n_tokens),
        "bits_per_byte": bits_per_byte(nll_sum, n_bytes),
    }
    if n_words:
        out["word_perplexity"] = perplexity(nll_sum, n_words)
    return out


# ---------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------


def _check_pairs(y_true: Sequence[Any], y_pred: Sequence[Any]) -> None:
    if len(y_true) != len(y_pred):
        raise DataError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise DataError("the evaluation set is empty")


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    _check_pairs(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]) -> list[list[int]]:
    """counts[i][j]: examples of class labels[i] predicted as labels[j]; a label not in `labels` is an error."""
    _check_pairs(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise DataError("the class list has duplicates")
    counts = [[0] * len(labels) for _ in labels]
    for n, (t, p) in enumerate(zip(y_true, y_pred)):
        for what, label in (("gold label", t), ("prediction", p)):
            if label not in index:
                known = ", ".join(map(str, labels))
                raise DataError(
                    f"example {n + 1}: {what} {label!r} is not one of the known classes ({known})"
                )
        counts[index[t]][index[p]] += 1
    return counts


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]
) -> dict[str, Any]:
    """accuracy, per-class precision/recall/F1/support, macro and weighted averages, the confusion matrix.

    A class with no predictions (or no examples) gets 0 for the undefined ratio, as scikit-learn with
    zero_division=0; macro averages every listed class, weighted averages by support.
    """
    cm = confusion_matrix(y_true, y_pred, labels)
    n = len(y_true)
    per_class: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = cm[i][i]
        predicted = sum(row[i] for row in cm)
        support = sum(cm[i])
        precision = _safe_div(tp, predicted)
        recall = _safe_div(tp, support)
        f1 = _safe_div(2 * tp, predicted + support)  # = 2PR/(P+R), and 0 where both are 0
        per_class[str(label)] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    rows = list(per_class.values())
    total = sum(r["support"] for r in rows)
    averages = {}
    for name in ("macro", "weighted"):
        weights = [1.0] * len(rows) if name == "macro" else [r["support"] for r in rows]
        norm = sum(weights) if name == "macro" else total
        averages[name] = {
            key: _safe_div(sum(w * r[key] for w, r in zip(weights, rows)), norm)
            for key in ("precision", "recall", "f1")
        }
    return {
        "accuracy": sum(cm[i][i] for i in range(len(labels))) / n,
        "macro_precision": averages["macro"]["precision"],
        "macro_recall": averages["macro"]["recall"],
        "macro_f1": averages["macro"]["f1"],
        "weighted_precision": averages["weighted"]["precision"],
        "weighted_recall": averages["weighted"]["recall"],
        "weighted_f1": averages["weighted"]["f1"],
        "per_class": per_class,
        "labels": [str(label) for label in labels],
        "confusion_matrix": cm,
    }


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------


def _check_tokenize(tokenize: str) -> None:
    if tokenize not in BLEU_TOKENIZERS:
        raise DataError(f"unknown BLEU tokenizer {tokenize!r} (one of {', '.join(BLEU_TOKENIZERS)})")


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> dict[str, Any]:
    """Corpus BLEU (sacrebleu, one reference per segment): score 0-100, n-gram precisions, brevity penalty,
    and sacrebleu's signature string so the number can be reproduced."""
    import sacrebleu

    _check_pairs(references, hypotheses)
    _check_tokenize(tokenize)
    metric = sacrebleu.BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return {
        "score": result.score,
        "precisions": list(result.precisions),
        "brevity_penalty": result.bp,
        "hyp_len": result.sys_len,
        "ref_len": result.ref_len,
        "signature": str(metric.get_signature()),
    }


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2; 0-100)."""
    import sacrebleu

    _check_pairs(references, hypotheses)
    metric = sacrebleu.CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return {"score": result.score, "signature": str(metric.get_signature())}


def sentence_bleu(hypothesis: str, reference: str, tokenize: str = "13a") -> float:
    """Smoothed sentence-level BLEU (sacrebleu's exp smoothing): for ranking examples, not for reporting."""
    import sacrebleu

    _check_tokenize(tokenize)
    return sacrebleu.sentence_bleu(hypothesis, [reference], tokenize=tokenize).score


def exact_match(hypotheses: Sequence[str], references: Sequence[str], strip: bool = True) -> float:
    """Share of hypotheses equal to their reference (after stripping surrounding whitespace)."""
    _check_pairs(references, hypotheses)
    if strip:
        return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)
    return sum(h == r for h, r in zip(hypotheses, references)) / len(references)
