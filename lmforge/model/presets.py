"""Named model shapes from ~1M to ~1B parameters, and `lmforge model info` (size, FLOPs, memory).

A preset holds GPTConfig fields except vocab_size, which comes from the tokenizer; `default_vocab_size` is
the vocabulary assumed where there is no tokenizer (`model info`). Keys in the `model:` config section
override the preset (see `GPTConfig.from_model_config`).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import torch

from lmforge.config import ModelConfig, TokenizerConfig
from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from lmforge.model.gpt import GPT

PRESETS: dict[str, dict[str, Any]] = {
    "char-tiny": dict(
        description="nanoGPT's Shakespeare-char CPU config (minutes on a laptop)",
        flavour="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, default_vocab_size=65,
    ),
    "char-small": dict(
        description="nanoGPT's Shakespeare-char GPU config (baby GPT)",
        flavour="gpt2", n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, default_vocab_size=65,
    ),
    "small": dict(
        description="a small Llama for an 8k BPE vocabulary",
        flavour="llama", n_layer=6, n_head=6, n_kv_head=2, n_embd=384, block_size=512, default_vocab_size=8000,
    ),
    "gpt2-124m": dict(
        description="GPT-2 small",
        flavour="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, default_vocab_size=50257,
    ),
    "gpt2-350m": dict(
        description="GPT-2 medium",
        flavour="gpt2", n_layer=24, n_head=16, n_embd=1024, block_size=1024, default_vocab_size=50257,
    ),
    "gpt2-774m": dict(
        description="GPT-2 large",
        flavour="gpt2", n_layer=36, n_head=20, n_embd=1280, block_size=1024, default_vocab_size=50257,
    ),
    "llama-120m": dict(
        description="a Llama of GPT-2 small's size (GQA, untied)",
        flavour="llama", n_layer=12, n_head=12, n_kv_head=4, n_embd=768, intermediate_size=2048,
        block_size=1024, tie_embeddings=False, default_vocab_size=32000,
    ),
    "llama-350m": dict(
        description="a Llama of GPT-2 medium's size (GQA, untied)",
        flavour="llama", n_layer=24, n_head=16, n_kv_head=4, n_embd=1024, intermediate_size=2816,
        block_size=2048, tie_embeddings=False, default_vocab_size=32000,
    ),
    "llama-1b": dict(
        description="Llama-3.2-1B's shape with a 32k vocabulary (untied)",
        flavour="llama", n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=8192,
        block_size=2048, tie_embeddings=False, default_vocab_size=32000,
    ),
}  # fmt: skip


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the named preset; an unknown name is a ConfigError that suggests the closest one."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown model preset '{name}'{hint}; see `lmforge model info list`")
    return dict(PRESETS[name])


def meta_model(mc: ModelConfig) -> GPT:
    """The model on the meta device: shapes and parameter counts with no memory, even for 1B parameters."""
    from lmforge.model.gpt import GPT, GPTConfig

    assumed = None
    if mc.vocab_size is None and not (mc.preset and get_preset(mc.preset).get("default_vocab_size")):
        assumed = TokenizerConfig().vocab_size
    with torch.device("meta"):
        return GPT(GPTConfig.from_model_config(mc, vocab_size=assumed))


# ---------------------------------------------------------------------------------------------------------
# model info
# ---------------------------------------------------------------------------------------------------------


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} FLOP"


def activation_bytes(model: GPT, batch_size: int, dtype_bytes: int) -> int:
    """Rough activation memory of one training step without checkpointing, with fused attention (no T×T
    scores kept): per layer and token the norm inputs/outputs, q/k/v, attention output and the MLP's
    hidden activations; plus the logits and their float32 softmax."""
    cfg = model.config
    kv_dim = cfg.n_kv_head * cfg.head_dim
    mlp = (4 if cfg.flavour == "llama" else 2) * cfg.intermediate_size
    per_layer = 6 * cfg.n_embd + 2 * kv_dim + mlp
    tokens = batch_size * cfg.block_size
    return tokens * (cfg.n_layer * per_layer * dtype_bytes + cfg.vocab_size * (dtype_bytes + 4))


def print_model_info(mc: ModelConfig, batch_size: int) -> None:
    """`lmforge model info PRESET|list [model.key=value ...]`: shape, size, FLOPs and memory."""
    if mc.preset == "list":
        _print_list()
        return
    model = meta_model(mc)
    cfg = model.config
    n, n_ne = model.num_params(), model.num_params(non_embedding=True)
    assumed = " (assumed; the tokenizer sets it)" if mc.vocab_size is None else ""
    heads = f"{cfg.n_head} heads" + (f" ({cfg.n_kv_head} kv)" if cfg.n_kv_head != cfg.n_head else "")
    lines = [
        f"model       {mc.preset or 'custom'}" + (f": {get_preset(mc.preset)['description']}" if mc.preset else ""),
        f"shape       {cfg.flavour}: {cfg.n_layer} layers, {heads}, {cfg.n_embd} dim (head {cfg.head_dim}),"
        f" MLP {cfg.intermediate_size}, block {cfg.block_size}",
        f"            vocab {cfg.vocab_size}{assumed}; tied embeddings {'yes' if cfg.tie_embeddings else 'no'},"
        f" bias {'yes' if cfg.bias else 'no'}, dropout {cfg.dropout}",
        f"parameters  {n:,} ({_count(n)}); non-embedding {n_ne:,} ({_count(n_ne)})",
    ]
    train_flops, fwd_flops = model.flops_per_token(training=True), model.flops_per_token(training=False)
    step_tokens = batch_size * cfg.block_size
    lines += [
        f"FLOPs/token training (forward+backward) {_flops(train_flops)}; inference (forward) {_flops(fwd_flops)}"
        f" at {cfg.block_size} context",
        f"            one training step of {batch_size} x {cfg.block_size} tokens: {_flops(train_flops * step_tokens)}",
    ]
    states = 16 * n  # fp32 weights + grads + AdamW's two moments
    lines.append(f"training memory (AdamW, batch {batch_size} x {cfg.block_size}, no activation checkpointing)")
    for label, db in (("fp32", 4), ("bf16 autocast", 2)):
        act = activation_bytes(model, batch_size, db)
        lines.append(
            f"  {label:<13} {_bytes(states + act)} = weights+grads+AdamW {_bytes(states)} (16 B/param)"
            f" + activations ~{_bytes(act)}"
        )
    kv_token = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim  # values per token (keys and values)
    lines += [
        "inference memory",
        f"  weights     fp32 {_bytes(4 * n)}, bf16 {_bytes(2 * n)}, int8 {_bytes(n)}",
        f"  KV cache    bf16 {_bytes(2 * kv_token)}/token, {_bytes(2 * kv_token * cfg.block_size)} per sequence"
        f" at {cfg.block_size} context, {_bytes(2 * kv_token * cfg.block_size * batch_size)} for {batch_size};"
        f" fp32 twice that",
    ]
    print("\n".join(lines))


def _print_list() -> None:
    rows = [("preset", "flavour", "layers", "heads", "dim", "block", "vocab", "params", "description")]
    for name, p in PRESETS.items():
        model = meta_model(ModelConfig(preset=name))
        c = model.config
        heads = f"{c.n_head}/{c.n_kv_head}" if c.n_kv_head != c.n_head else str(c.n_head)
        row = (name, c.flavour, c.n_layer, heads, c.n_embd, c.block_size, c.vocab_size, _count(model.num_params()))
        rows.append((*map(str, row), p["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    print("heads a/b: a query heads, b key/value heads; vocab: assumed, the tokenizer sets it")
