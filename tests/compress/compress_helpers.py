"""Real data for the compression tests: char-level token shards of tiny-shakespeare (read from the shared
data, never copied into the repository) and a small teacher pretrained on them by `lmforge pretrain`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.cli import main
from lmforge.config import TokenizerConfig
from lmforge.tokenizer.train import char_tokenizer, save_tokenizer, special_tokens

TEACHER = [
    "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=64",
    "train.batch_size=16", "train.max_steps=100", "train.optim.lr=3e-3", "train.schedule.warmup_steps=10",
    "train.eval_every=100", "train.eval_batches=2", "train.save_every=100", "train.log_every=50",
    "train.sample_every_eval=false", "train.threads=1", "train.device=cpu",
]  # fmt: skip
# Quick before/after measurements: few windows, a short timed decode, one timing run.
QUICK_EVAL = ["compress.eval.windows=8", "compress.eval.gen_tokens=8", "compress.eval.repeats=1",
              "compress.eval.threads=1"]  # fmt: skip


def write_char_shards(text: str, out: Path, val_fraction: float = 0.1) -> Path:
    """tokenizer.json (+ config) and train/val uint16 shards with meta.json, as `lmforge tokenizer encode`
    lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    tc = TokenizerConfig(kind="char")
    tokenizer = char_tokenizer(sorted(set(text)), special_tokens(tc), tc.unk_token)
    save_tokenizer(tokenizer, out, tc, model_max_length=64)
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(map(ord, text)) + 1, dtype=np.uint16)
    for ch in set(text):
        table[ord(ch)] = vocab[ch]
    ids = table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    cut = int(len(ids) * (1 - val_fraction))
    splits = {}
    for name, part in (("train", ids[:cut]), ("val", ids[cut:])):
        part.astype("<u2").tofile(out / f"{name}.bin")
        sha = hashlib.sha256(part.tobytes()).hexdigest()
        splits[name] = {"files": [{"name": f"{name}.bin", "tokens": len(part), "sha256": sha}],
                        "tokens": len(part), "documents": 1}  # fmt: skip
    tok_sha = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    meta = {"dtype": "uint16", "vocab_size": tokenizer.get_vocab_size(), "eos_id": vocab[tc.eos_token],
            "tokenizer_sha256": tok_sha, "splits": splits}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


def pretrain_teacher(shards: Path, out: Path, extra: list[str] | None = None) -> Path:
    assert main(["pretrain", str(shards), "--out", str(out), *TEACHER, *(extra or [])]) == 0
    return out


def error_line(capsys: Any, argv: list[str]) -> str:
    """Run the CLI expecting bad input: exit 2 and one `error:` line, no traceback; returns the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


def report_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "compress_report.json").read_text(encoding="utf-8"))
