"""Tiny char-level token shards and configs for the training tests (written with numpy, no other stage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

TEXT = (
    "First Citizen: Before we proceed any further, hear me speak.\n"
    "All: Speak, speak.\n"
    "First Citizen: You are all resolved rather to die than to famish?\n"
    "All: Resolved. resolved.\n"
)


def char_tokenizer_json(chars: list[str]) -> str:
    """A minimal HF tokenizers char-level tokenizer (WordLevel over single characters)."""
    vocab = {c: i for i, c in enumerate(chars)}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": chars[0]},
    })  # fmt: skip


def write_shards(
    out: Path, text: str = TEXT * 40, val_fraction: float = 0.1, tokenizer: bool = True,
    vocab_size: int | None = None, tokenizer_sha: str | None = None,
) -> Path:  # fmt: skip
    """Encode `text` char by char into train.bin / val.bin (uint16) + meta.json (+ tokenizer.json)."""
    out.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * (1 - val_fraction))
    splits = {}
    for name, part in (("train", ids[:n]), ("val", ids[n:])):
        part.tofile(out / f"{name}.bin")
        sha = hashlib.sha256(part.tobytes()).hexdigest()
        splits[name] = {"files": [{"name": f"{name}.bin", "tokens": len(part), "sha256": sha}],
                        "tokens": len(part), "documents": 1}  # fmt: skip
    tok_text = char_tokenizer_json(chars)
    if tokenizer:
        (out / "tokenizer.json").write_text(tok_text, encoding="utf-8")
    meta = {
        "dtype": "uint16",
        "vocab_size": vocab_size or len(chars),
        "eos_id": None,
        "tokenizer_sha256": tokenizer_sha or hashlib.sha256(tok_text.encode()).hexdigest(),
        "splits": splits,
    }
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return out


TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.batch_size=8", "train.log_every=1", "train.eval_every=10", "train.eval_batches=2",
    "train.schedule.warmup_steps=2", "train.sample_tokens=20", "train.threads=1",
]  # fmt: skip
