"""Tiny models for the export tests: a BPE tokenizer directory, lmforge checkpoints with random weights,
and random Hugging Face checkpoints saved by transformers itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.config import TokenizerConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.train import save_tokenizer, train_tokenizer
from lmforge.train.checkpoint import save_checkpoint

VOCAB = 300
TEXT = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak. You are all resolved rather to die than to famish?",
    "Resolved. resolved. First, you know Caius Marcius is chief enemy to the people.",
] * 20


def write_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer of at most VOCAB tokens (ids 0-3: bos, eos, pad, unk)."""
    tc = TokenizerConfig(kind="bpe", vocab_size=VOCAB, min_frequency=1)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(train_tokenizer(TEXT, tc, show_progress=False), out, tc, model_max_length=64)
    return out


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (norms and biases too), so every mapped tensor matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if ("ln_" in name or "norm" in name) else 0.1 * noise)


def tiny_config(flavour: str, **overrides: Any) -> GPTConfig:
    shape: dict[str, Any] = {"vocab_size": VOCAB, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64}
    if flavour == "llama":
        shape.update(n_kv_head=2, intermediate_size=96, rope_theta=500.0)
    return GPTConfig(flavour=flavour, **{**shape, **overrides})


def write_checkpoint(root: Path, cfg: GPTConfig, tokenizer_dir: Path | None, seed: int = 0) -> Path:
    """An lmforge checkpoint (as pretraining writes it) of a GPT with random weights; returns its dir."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    randomize(model, seed)
    info: dict[str, Any] = {"stage": "pretrain", "step": 1, "eos_id": 1}
    if tokenizer_dir is not None:
        info["data"] = str(tokenizer_dir)  # where tokenizer_config.json is found, as for token shards
    tok_file = tokenizer_dir / "tokenizer.json" if tokenizer_dir is not None else None
    return save_checkpoint(root, 1, model.state_dict(), cfg.to_dict(), {}, info, tok_file)


def save_hf(model: Any, out: Path) -> Path:
    """Random weights into a transformers model, saved as safetensors."""
    randomize(model)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
