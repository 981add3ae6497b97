"""The stages chained through the real CLI, as a user runs them: prepare -> tokenizer -> shards -> pretrain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def lmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(("corpus", "kind"), [("tinyshakespeare/input.txt", "char"), ("chinese-text", "bpe")])
def test_prepare_tokenize_encode_pretrain(tmp_path: Path, shared_data: Path, corpus: str, kind: str) -> None:
    source = shared_data / corpus
    data, tok, shards, run = (tmp_path / n for n in ("data", "tok", "shards", "run"))

    proc = lmforge("prepare", str(source), "--out", str(data), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((data / "report.json").read_text())
    assert (data / "train.jsonl.zst").is_file() and (data / "val.jsonl.zst").is_file()
    assert report["steps"], "the report lists every step"

    proc = lmforge("tokenizer", "train", str(data), "--out", str(tok), f"tokenizer.kind={kind}",
                   "tokenizer.vocab_size=600", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = lmforge("tokenizer", "encode", str(data), "--tokenizer", str(tok), "--out", str(shards), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((shards / "meta.json").read_text())
    train_bin = shards / meta["splits"]["train"]["files"][0]["name"]
    tokens = np.memmap(train_bin, dtype=meta["dtype"], mode="r")
    assert len(tokens) == meta["splits"]["train"]["tokens"] > 10_000
    assert int(tokens.max()) < meta["vocab_size"]

    proc = lmforge("pretrain", str(shards), "--out", str(run), "model.n_layer=1", "model.n_embd=32",
                   "model.n_head=2", "model.block_size=32", "train.batch_size=4", "train.max_steps=6",
                   "train.eval_every=3", "train.eval_batches=2", "train.save_every=3", "train.sample_tokens=8",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in e for e in events)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert any(i["path"].endswith(".bin") for i in manifest["inputs"])
