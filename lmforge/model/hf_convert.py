"""Weight and config mapping between our GPT and Hugging Face's causal LMs.

`flavour` 'gpt2' is GPT2LMHeadModel's layout; 'llama' is LlamaForCausalLM's, which MistralForCausalLM and
Qwen2ForCausalLM share (Qwen2 adds q/k/v biases: our `qkv_bias`). GPT-2's HF checkpoints use Conv1D
(weights stored as (in, out)), so every matrix is transposed; its fused c_attn is our qkv. Llama's separate
q/k/v projections are concatenated into our qkv.
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
        if not cfg.bias or not cfg.qkv_bias:
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
    """Our state dict from a GPT2LMHeadModel (flavour 'gpt2') or Llama/Mistral/Qwen2 ('llama') one."""
    sd: dict[str, Tensor] = {}
    for ours, theirs, transpose in _key_pairs(flavour, cfg):
        t = hf_sd[theirs]
        sd[ours] = t.t().contiguous() if transpose else t
    if flavour == "llama":
        for i in range(cfg.n_layer):
            for s in ["weight", "bias"] if cfg.qkv_bias else ["weight"]:
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
            for s in ["weight", "bias"] if cfg.qkv_bias else ["weight"]:
                parts = sd[f"blocks.{i}.attn.qkv.{s}"].split(sizes, dim=0)
                for n, part in zip("qkv", parts):
                    hf[f"model.layers.{i}.self_attn.{n}_proj.{s}"] = part.contiguous()
    hf["lm_head.weight"] = hf["transformer.wte.weight" if flavour == "gpt2" else "model.embed_tokens.weight"]
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = sd["lm_head.weight"]
    return hf


SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")


def _getter(hf_config: Any) -> Any:
    """`get(key, default)` over a transformers config object, a namespace or a plain dict (config.json)."""
    if isinstance(hf_config, dict):
        return lambda key, default=None: hf_config.get(key, default)
    return lambda key, default=None: getattr(hf_config, key, default)


def config_from_hf(hf_config: Any) -> GPTConfig:
    """Our GPTConfig from a transformers config (GPT2Config, LlamaConfig, MistralConfig, Qwen2Config), its
    namespace or its config.json dict. Mistral and Qwen2 are Llama-layout models: Mistral as it is (without
    a sliding window), Qwen2 with biases on the q/k/v projections only.

    Sliding-window attention is not supported: a config whose window is shorter than its
    max_position_embeddings is refused (set sliding_window to null, or to max_position_embeddings, if the
    model is only ever run on contexts within the window: attention is then the same).
    """
    get = _getter(hf_config)
    kind = get("model_type")
    if kind == "gpt2":
        if get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-2 activation {get('activation_function')!r} is not supported")
        if get("scale_attn_by_inverse_layer_idx", False) or get("reorder_and_upcast_attn", False):
            raise ConfigError("GPT-2 models with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported")
        return GPTConfig(
            flavour="gpt2", vocab_size=get("vocab_size"), block_size=get("n_positions"),
            n_layer=get("n_layer"), n_head=get("n_head"), n_embd=get("n_embd"),
            intermediate_size=get("n_inner") or 4 * get("n_embd"), bias=True,
            tie_embeddings=bool(get("tie_word_embeddings", True)),
            norm_eps=get("layer_norm_epsilon", 1e-5),
        )  # fmt: skip
    if kind in ("llama", "mistral", "qwen2"):
        return _llama_like_config(kind, get)
    if kind is None:
        raise ConfigError("the Hugging Face config has no model_type: cannot tell its architecture")
    raise ConfigError(
        f"cannot convert a Hugging Face model of model_type {kind!r}: supported are {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _llama_like_config(kind: str, get: Any) -> GPTConfig:
    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[kind]
    rope = get("rope_parameters") or get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{name} rope_type {rope_type!r} is not supported (only 'default')")
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
    if get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{name} hidden_act {get('hidden_act')!r} is not supported (only 'silu')")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    head_dim = get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ConfigError(f"{name} models with head_dim * heads != hidden_size are not supported")
    max_positions = get("max_position_embeddings")
    window = _sliding_window(kind, get)
    if window is not None and window < max_positions:
        raise ConfigError(
            f"{name} sliding-window attention (sliding_window={window} < max_position_embeddings="
            f"{max_positions}) is not supported; set sliding_window to null if you only use contexts within it"
        )
    if kind == "llama":
        bias = bool(get("attention_bias", False))
        if bias != bool(get("mlp_bias", False)):
            raise ConfigError("Llama models need attention_bias == mlp_bias here (one `bias` switch)")
        qkv_bias = bias
    else:  # Mistral: no biases; Qwen2: q/k/v biases, none on o_proj or the MLP
        bias, qkv_bias = False, kind == "qwen2"
    return GPTConfig(
        flavour="llama", vocab_size=get("vocab_size"), block_size=max_positions,
        n_layer=get("num_hidden_layers"), n_head=heads, n_kv_head=get("num_key_value_heads") or heads,
        n_embd=hidden, intermediate_size=get("intermediate_size"), bias=bias, qkv_bias=qkv_bias,
        tie_embeddings=bool(get("tie_word_embeddings", False)), rope_theta=float(theta),
        norm_eps=get("rms_norm_eps", 1e-6),
    )  # fmt: skip


def _sliding_window(kind: str, get: Any) -> int | None:
    """The attention window a Mistral/Qwen2 config applies in some layer, or None."""
    window = get("sliding_window")
    if kind == "mistral" or window is None:
        return window
    if kind == "qwen2":
        layer_types = get("layer_types")
        if layer_types is not None:
            return window if "sliding_attention" in layer_types else None
        uses = get("use_sliding_window", False) and get("max_window_layers", 0) < get("num_hidden_layers")
        return window if uses else None
    return None


def hf_architecture(cfg: GPTConfig) -> tuple[str, str]:
    """(model_type, architecture class) of the transformers model that holds our model exactly."""
    if cfg.flavour == "gpt2":
        if not cfg.bias or not cfg.qkv_bias:
            raise ConfigError("the Hugging Face GPT-2 layout needs biases (model.bias=true)")
        if cfg.n_kv_head != cfg.n_head:
            raise ConfigError("GPT-2 has no grouped-query attention: n_kv_head must equal n_head")
        if cfg.n_head * cfg.head_dim != cfg.n_embd:  # type: ignore[operator]
            raise ConfigError(f"GPT-2 derives the head size from n_embd / n_head: {cfg.n_head} heads of "
                              f"{cfg.head_dim} (a structurally pruned model) have no GPT2LMHeadModel layout")
        return "gpt2", "GPT2LMHeadModel"
    if cfg.qkv_bias == cfg.bias:
        return "llama", "LlamaForCausalLM"
    if cfg.qkv_bias and not cfg.bias:
        return "qwen2", "Qwen2ForCausalLM"
    raise ConfigError("no Hugging Face architecture has biases everywhere but on q/k/v (qkv_bias=false, bias=true)")


def config_to_hf(cfg: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The config.json fields of the transformers model `hf_architecture(cfg)` names (the inverse of
    `config_from_hf`), with `rope_theta` and transformers 5's `rope_parameters` both given."""
    model_type, arch = hf_architecture(cfg)
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    common = {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_embeddings, **ids}  # fmt: skip
    if model_type == "gpt2":
        return {
            **common, "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.intermediate_size, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
        }  # fmt: skip
    fields = {
        **common, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_dropout": cfg.dropout,
    }  # fmt: skip
    if model_type == "llama":
        fields.update(attention_bias=bool(cfg.bias), mlp_bias=bool(cfg.bias))
    else:
        fields.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return fields
