"""The model: one decoder-only transformer in two flavours, readable top to bottom.

- `gpt2`: learned position embeddings, LayerNorm (optional bias), GELU (tanh) MLP, biases - as GPT-2.
- `llama`: rotary position embeddings (RoPE), RMSNorm, SwiGLU MLP, grouped-query attention, no biases.

Both flavours keep Hugging Face's numerics (GPT2LMHeadModel, LlamaForCausalLM), so `hf_convert.py` maps
weights either way and gives the same logits. Module names are shared by the flavours:
`wte`, `wpe` (gpt2), `blocks.{i}.{ln_1, attn.{qkv, out}, ln_2, mlp.{gate (llama), up, down}}`, `ln_f`,
`lm_head`. With tied embeddings `lm_head.weight` *is* `wte.weight` (state_dict() names it twice).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: = n_head (no grouping)
    n_embd: int = 128
    intermediate_size: int | None = None  # None: 4*n_embd (gpt2) or SwiGLU's ~8/3*n_embd (llama)
    head_dim: int | None = None  # None: n_embd // n_head (a pruned model keeps its heads' size, fewer of them)
    dropout: float = 0.0
    bias: bool | None = None  # None: True for gpt2, False for llama
    qkv_bias: bool | None = None  # biases of the q/k/v projection; None: = bias (Qwen2: True with bias False)
    tie_embeddings: bool = True
    flavour: Literal["gpt2", "llama"] = "gpt2"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        """Resolve the None defaults and check that the shapes fit together."""
        if self.flavour not in ("gpt2", "llama"):
            raise ConfigError(f"model.flavour must be 'gpt2' or 'llama', got {self.flavour!r}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.bias is None:
            self.bias = self.flavour == "gpt2"
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.flavour, self.n_embd)
        sizes = ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size")
        for key in sizes:
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1, got {getattr(self, key)}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        elif self.head_dim < 1:
            raise ConfigError(f"model.head_dim must be at least 1, got {self.head_dim}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model.n_head ({self.n_head}) must be divisible by n_kv_head {self.n_kv_head}")
        if self.flavour == "llama" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size, got head_dim = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_model_config(cls, mc: ModelConfig, vocab_size: int | None = None) -> GPTConfig:
        """The model shape from the `model:` config section.

        With `mc.preset` set, start from the preset and take from `mc` only the keys whose value differs
        from ModelConfig's default: `model.n_layer=8` overrides the preset, but a key cannot be set back to
        its ModelConfig default that way (give the whole shape without a preset for that). The vocabulary
        size is `mc.vocab_size` if set (at least `vocab_size`), else `vocab_size` (the tokenizer's), else
        the preset's assumed one.
        """
        from lmforge.model.presets import get_preset

        defaults = ModelConfig()
        keys = [f.name for f in dataclasses.fields(cls)]
        values = {k: getattr(mc, k) for k in keys}
        assumed_vocab = None
        if mc.preset:
            preset = get_preset(mc.preset)
            values = {k: preset[k] for k in keys if k in preset}
            values.update({k: getattr(mc, k) for k in keys if getattr(mc, k) != getattr(defaults, k)})
            assumed_vocab = preset.get("default_vocab_size")
        if mc.vocab_size is None:
            values["vocab_size"] = vocab_size if vocab_size is not None else assumed_vocab
        elif vocab_size is not None and mc.vocab_size < vocab_size:
            raise ConfigError(f"model.vocab_size={mc.vocab_size} is below the tokenizer's ({vocab_size})")
        if values.get("vocab_size") is None:
            raise ConfigError("model.vocab_size is unknown: set it, or give a tokenizer")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """The inverse of `to_dict` (model_config.json); an unknown key is an error."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"model config: unknown key '{unknown[0]}'")
        return cls(**d)


def default_intermediate_size(flavour: str, n_embd: int) -> int:
    """4*n_embd for GPT-2; for SwiGLU 2/3 of that (same parameter count), rounded up to a multiple of 64."""
    return 4 * n_embd if flavour == "gpt2" else 64 * math.ceil(8 * n_embd / 3 / 64)


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as HF's LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.flavour == "llama":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=bool(cfg.bias))


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin (B, T, head_dim) of the RoPE angles at (B, T) positions, in HF Llama's layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, nh, T, hd) queries or keys by the (B, T, hd) angles."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of the tokens seen so far, preallocated per layer as (B, n_kv_head, max_len, head_dim).

    `GPT.forward` writes the new tokens' keys/values at `length` in every layer, then advances `length`.
    `mask` (B, max_len) remembers which cached positions are real tokens, once a forward got a padding mask.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.mask = torch.ones(batch_size, max_len, device=device, dtype=torch.bool)
        self.padded = False  # whether `mask` holds any padding (then every step attends through it)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new (B, n_kv_head, T, hd) keys/values; return all of them so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reset(self) -> None:
        self.length, self.padded = 0, False
        self.mask.fill_(True)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # `lmforge explain` sets keep_weights: SDPA returns no attention weights, so they are then computed
        # explicitly (slower) and kept in `weights` (B, n_head, T, keys) until the next forward.
        self.keep_weights = False
        self.weights: Tensor | None = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                kv_cache: KVCache | None) -> Tensor:
        B, T, _ = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        # Without a mask: plain causal attention, or (one new token after a cache) attend to every key.
        is_causal = mask is None and k.size(2) == T
        if self.keep_weights:
            y, self.weights = attention_with_weights(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,  # query head h reads kv head h // (n_head/n_kv_head)
            )
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.out(y))


def attention_with_weights(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                           is_causal: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """SDPA written out (no dropout): (the output, the softmax weights (B, n_head, T, keys))."""
    if k.size(1) != q.size(1):  # grouped-query: query head h reads kv head h // (n_head / n_kv_head)
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))
    if is_causal:
        mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1).to(q.dtype)
    return weights @ v, weights


class MLP(nn.Module):
    """GPT-2: down(gelu(up(x))). Llama (SwiGLU): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.swiglu = cfg.flavour == "llama"
        if self.swiglu:
            self.gate = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.bias)
        self.up = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x), approximate="tanh")
        return self.dropout(self.down(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                kv_cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, kv_cache)
        return x + self.mlp(self.ln_2(x))


def attention_mask_for(T: int, past: int, pad: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean (B or 1, 1, T, past + T) mask of which keys each of T new queries may attend to; None when
    plain causal attention does (no padding, no cache) or no mask is needed (one new token, no padding)."""
    if pad is None and (past == 0 or T == 1):
        return None
    rows = past + torch.arange(T, device=device)[:, None]
    cols = torch.arange(past + T, device=device)[None, :]
    allowed = (cols <= rows)[None]  # (1, T, past + T)
    if pad is not None:
        # A padding query sees only itself: never a row with nothing to attend to (NaN in softmax).
        allowed = (allowed & pad[:, None, :]) | (cols == rows)  # (B, T, past + T)
    return allowed[:, None]


def segment_mask_and_positions(segment_ids: Tensor) -> tuple[Tensor, Tensor]:
    """For packed rows (B, T) of segment ids: the block-diagonal causal mask (B, 1, T, T) - a token attends
    only to earlier tokens of its own segment - and each token's position within its segment (B, T)."""
    B, T = segment_ids.shape
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    index = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return (same & causal)[:, None], index - first


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        # `_weight=` skips nn.Embedding's own init: init_weights() does it (and it is slow on meta).
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, _weight=torch.empty(cfg.vocab_size, cfg.n_embd))
        self.wpe = None
        if cfg.flavour == "gpt2":
            pos = torch.empty(cfg.block_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd, _weight=pos)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Training only: recompute each block in the backward pass instead of keeping its activations.
        self.activation_checkpointing = False
        if self.wte.weight.device.type != "meta":  # on meta there is nothing to fill (call it after to_empty)
            self.init_weights()
        elif cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def init_weights(self) -> None:
        """normal(0, 0.02) for matrices and embeddings, zero biases, norms at one; the residual output
        projections (attention out, MLP down: two per block) at 0.02 / sqrt(2 * n_layer) (GPT-2 paper).
        Ties lm_head to wte first when configured (again after `to_empty`, which unties them)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one tensor, under both names in state_dict()
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                residual = name.endswith(("attn.out", "mlp.down"))
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if residual else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.LayerNorm | RMSNorm):
                nn.init.ones_(module.weight)
            if isinstance(module, nn.Linear | nn.LayerNorm) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_hidden(self, idx: Tensor, attention_mask: Tensor | None = None,
                       kv_cache: KVCache | None = None, position_ids: Tensor | None = None,
                       segment_ids: Tensor | None = None) -> Tensor:
        """Final-norm hidden states (B, T, n_embd) of the tokens idx (B, T).

        attention_mask: 1 for real tokens, 0 for padding; give it only when there is padding. Over the new
        tokens (B, T) or, with a cache, over cached + new tokens (B, length + T); the cache remembers it.
        Without position_ids, a row's positions count its real tokens only, so a left-padded row gets the
        positions (and logits) of the unpadded sequence.
        segment_ids (B, T): packed sequences (fine-tuning); attention stays inside each run of equal ids and
        positions restart at every run (give each sequence of a row its own id), so each computes as if alone.
        Not with a cache or an attention_mask.
        """
        T = idx.size(1)
        if segment_ids is not None:
            if kv_cache is not None or attention_mask is not None:
                raise ValueError("segment_ids cannot be combined with a KV cache or an attention_mask")
            mask, positions = segment_mask_and_positions(segment_ids.to(idx.device))
            return self._run_blocks(idx, positions if position_ids is None else position_ids, mask, None)
        past = kv_cache.length if kv_cache is not None else 0
        end = past + T
        if kv_cache is not None and end > kv_cache.max_len:
            raise ValueError(f"the KV cache holds {kv_cache.max_len} positions; {end} needed")
        pad = None if attention_mask is None else attention_mask.to(device=idx.device, dtype=torch.bool)
        if kv_cache is not None:
            if pad is not None:
                if pad.size(1) not in (T, end):
                    raise ValueError(f"attention_mask has {pad.size(1)} columns; {T} or {end} expected")
                kv_cache.mask[:, end - pad.size(1) : end] = pad
                kv_cache.padded = True
            pad = kv_cache.mask[:, :end] if kv_cache.padded else None  # (B, past + T)

        if position_ids is None:
            if pad is not None:  # count real tokens: a left-padded row starts at position 0
                position_ids = (pad.long().cumsum(-1) - 1).clamp(min=0)[:, past:end]
            elif end > self.config.block_size and self.wpe is not None:
                raise ValueError(f"{end} positions, past the model's block_size {self.config.block_size}")
            else:
                position_ids = torch.arange(past, end, device=idx.device)
        x = self._run_blocks(idx, position_ids, attention_mask_for(T, past, pad, idx.device), kv_cache)
        if kv_cache is not None:
            kv_cache.length = end
        return x

    def _run_blocks(self, idx: Tensor, position_ids: Tensor, mask: Tensor | None,
                    kv_cache: KVCache | None) -> Tensor:
        """Embeddings, the blocks under `mask` (None: plain causal), the final norm."""
        B, T = idx.shape
        position_ids = position_ids.expand(B, T)
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = self.drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # non-reentrant: works with torch.compile, DDP/FSDP and frozen (LoRA) weights
                x = checkpoint(block, x, rope, mask, kv_cache, use_reentrant=False)
            else:
                x = block(x, rope, mask, kv_cache)
        return self.ln_f(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None, attention_mask: Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: Tensor | None = None,
                ignore_index: int = -100, segment_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, vocab), mean cross-entropy over the targets that are not ignore_index, or None)."""
        logits = self.lm_head(self.forward_hidden(idx, attention_mask, kv_cache, position_ids, segment_ids))
        loss = None
        if targets is not None:
            flat = logits.float().view(-1, logits.size(-1))
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index)
        return logits, loss

    def new_kv_cache(self, batch_size: int, max_len: int | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for max_len positions (default block_size), on the model's device and dtype."""
        cfg, w = self.config, self.wte.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim,
                       device=device or w.device, dtype=dtype or w.dtype)

    # -- sizes and optimizer -------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, a shared tensor once. non_embedding: without the position table, and without the token
        table unless it is tied to the output head (which does matmul work) - as nanoGPT counts for FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel() if self.wpe is not None else 0
            n -= self.wte.weight.numel() if not self.config.tie_embeddings else 0
        return n

    def flops_per_token(self, training: bool = True, context: int | None = None) -> int:
        """Matmul FLOPs per token at `context` tokens (default block_size): 2N forward for the weights plus
        4*n_layer*n_embd*context for the attention scores, times 3 with the backward pass - the 6N + 12LCT
        of the PaLM paper's appendix B (and nanoGPT's estimate_mfu)."""
        cfg = self.config
        attention = 4 * cfg.n_layer * cfg.n_embd * (context or cfg.block_size)
        forward = 2 * self.num_params(non_embedding=True) + attention
        return 3 * forward if training else forward

    def configure_optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Two AdamW groups: weight decay on Linear weight matrices; none on norms, biases and embeddings
        (a tied lm_head is the embedding). Trainable parameters only, each exactly once."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear) and m.weight.dim() == 2}
        matrices -= embeddings
        decay, no_decay = [], []
        for p in self.parameters():  # yields a shared tensor once
            if p.requires_grad:
                (decay if id(p) in matrices else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # -- sampling ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 attention_mask: Tensor | None = None) -> Tensor:
        """idx (B, T) with max_new_tokens sampled tokens appended; temperature <= 0 is greedy. With a KV cache
        when everything fits in block_size, else recomputing over the last block_size tokens each step."""
        block = self.config.block_size
        cache = None
        if idx.size(1) + max_new_tokens <= block:
            cache = self.new_kv_cache(idx.size(0), idx.size(1) + max_new_tokens)
        step_input, mask = idx, attention_mask
        for _ in range(max_new_tokens):
            if cache is None:
                step_input = idx[:, -block:]
                mask = attention_mask[:, -block:] if attention_mask is not None else None
            logits, _ = self(step_input, attention_mask=mask, kv_cache=cache)
            next_id = sample(logits[:, -1, :], temperature, top_k)
            idx = torch.cat((idx, next_id), dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat((attention_mask, torch.ones_like(attention_mask[:, :1])), dim=1)
            step_input, mask = next_id, None  # with a cache: it remembers the padding
        return idx


def sample(logits: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """One token id (B, 1) per row of (B, vocab) logits."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)
