"""Weight mapping between our GPT and Hugging Face's GPT2LMHeadModel / LlamaForCausalLM state dicts.

GPT-2's HF checkpoints use Conv1D (weights stored as (in, out)), so every matrix is transposed; its fused
c_attn is our qkv. Llama's separate q/k/v projections are concatenated into our qkv.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.model.gpt import GPTConfig

_GPT2_LAYER = {  # ours -> HF, inside blocks.{i} / transformer.h.{i}
    "ln_1": "ln_1",
    "attn.qkv": "attn.c_attn",
    "attn.out": "attn.c_proj",
    "ln_2": "ln_2",
    "mlp.up": "mlp.c_fc",
    "mlp.down": "mlp.c_proj",
}
_LLAMA_LAYER = {
    "ln_1": "input_layernorm",
    "attn.out": "self_attn.o_proj",
    "ln_2": "post_attention_layernorm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}
_CONV1D = ("attn.qkv", "attn.out", "mlp.up", "mlp.down")  # GPT-2 modules whose weight is transposed


def _key_pairs(flavour: str, cfg: GPTConfig) -> list[tuple[str, str, bool]]:
    """(our key, HF key, transpose) for every tensor except Llama's q/k/v."""
    suffixes = ["weight", "bias"] if cfg.bias else ["weight"]
    if flavour == "gpt2":
        if not cfg.bias:
            raise ConfigError("the Hugging Face GPT-2 layout needs biases (model.bias=true)")
        pairs = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False)]
        pairs += [(f"ln_f.{s}", f"transformer.ln_f.{s}", False) for s in suffixes]
        layer, prefix = _GPT2_LAYER, "transformer.h"
    elif flavour == "llama":
        pairs = [("wte.weight", "model.embed_tokens.weight", False), ("ln_f.weight", "model.norm.weight", False)]
        layer, prefix = _LLAMA_LAYER, "model.layers"
    else:
        raise ConfigError(f"unknown model flavour {flavour!r}")
    for i in range(cfg.n_layer):
        for ours, theirs in layer.items():
            norm = ours.startswith("ln_")
            for s in suffixes if flavour == "gpt2" or not norm else ["weight"]:
                transpose = flavour == "gpt2" and ours in _CONV1D and s == "weight"
                pairs.append((f"blocks.{i}.{ours}.{s}", f"{prefix}.{i}.{theirs}.{s}", transpose))
    return pairs


def from_hf_state_dict(flavour: str, hf_sd: dict[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """Our state dict from a GPT2LMHeadModel (flavour 'gpt2') or LlamaForCausalLM ('llama') one."""
    sd: dict[str, Tensor] = {}
    for ours, theirs, transpose in _key_pairs(flavour, cfg):
        t = hf_sd[theirs]
        sd[ours] = t.t().contiguous() if transpose else t
    if flavour == "llama":
        for i in range(cfg.n_layer):
            for s in ["weight", "bias"] if cfg.bias else ["weight"]:
                qkv = [hf_sd[f"model.layers.{i}.self_attn.{n}_proj.{s}"] for n in "qkv"]
                sd[f"blocks.{i}.attn.qkv.{s}"] = torch.cat(qkv, dim=0)
    sd["lm_head.weight"] = sd["wte.weight"] if cfg.tie_embeddings else hf_sd["lm_head.weight"]
    return sd


def to_hf_state_dict(flavour: str, sd: dict[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """The inverse of `from_hf_state_dict` (lm_head.weight included, shared with the embedding when tied)."""
    hf: dict[str, Tensor] = {}
    for ours, theirs, transpose in _key_pairs(flavour, cfg):
        t = sd[ours]
        hf[theirs] = t.t().contiguous() if transpose else t
    if flavour == "llama":
        sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
        for i in range(cfg.n_layer):
            for s in ["weight", "bias"] if cfg.bias else ["weight"]:
                parts = sd[f"blocks.{i}.attn.qkv.{s}"].split(sizes, dim=0)
                for n, part in zip("qkv", parts):
                    hf[f"model.layers.{i}.self_attn.{n}_proj.{s}"] = part.contiguous()
    hf["lm_head.weight"] = hf["transformer.wte.weight" if flavour == "gpt2" else "model.embed_tokens.weight"]
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = sd["lm_head.weight"]
    return hf


def config_from_hf(hf_config: Any) -> GPTConfig:
    """Our GPTConfig from a transformers GPT2Config or LlamaConfig."""
    kind = getattr(hf_config, "model_type", None)
    if kind == "gpt2":
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-2 activation {hf_config.activation_function!r} is not supported")
        return GPTConfig(
            flavour="gpt2", vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
            n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
            intermediate_size=hf_config.n_inner or 4 * hf_config.n_embd, bias=True,
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
            norm_eps=hf_config.layer_norm_epsilon,
        )  # fmt: skip
    if kind == "llama":
        rope = getattr(hf_config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"Llama rope_type {rope['rope_type']!r} is not supported (only 'default')")
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
            raise ConfigError("Llama models with head_dim * heads != hidden_size are not supported")
        if bool(hf_config.attention_bias) != bool(getattr(hf_config, "mlp_bias", False)):
            raise ConfigError("Llama models need attention_bias == mlp_bias here (one `bias` switch)")
        return GPTConfig(
            flavour="llama", vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
            n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
            n_kv_head=hf_config.num_key_value_heads, n_embd=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size, bias=bool(hf_config.attention_bias),
            tie_embeddings=bool(hf_config.tie_word_embeddings), rope_theta=float(theta),
            norm_eps=hf_config.rms_norm_eps,
        )  # fmt: skip
    raise ConfigError(f"cannot convert a Hugging Face {kind!r} model (gpt2 and llama only)")
