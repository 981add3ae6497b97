"""LoRA (Hu et al., 2021): low-rank adapters on chosen Linear layers, and freezing for full fine-tuning.

`apply_lora(model, LoraSpec(rank=8, alpha=16, targets=["attn.qkv", "mlp.*"]))` swaps each matched
`nn.Linear` for a `LoRALinear`: the same frozen weight and bias under the same names, plus trainable
`lora_A` (rank, in) and `lora_B` (out, rank), adding `(alpha / rank) * B @ A @ dropout(x)` to the output.
B starts at zero, so the adapted model starts out as the base model. `merge_lora` folds the update into
the weight (W += scale * B @ A) and puts plain Linear layers back.

An adapter directory holds `adapter.safetensors` (the lora_A/lora_B tensors, named as in the model's
state dict) and `adapter_config.json`: rank, alpha, dropout, the target patterns, the adapted modules,
and the base model's identity (its path, the sha256 of its weights, its model config). An adapter is
applied only over the base it was trained on: `check_base` refuses any other with one line.

Target patterns are fnmatch patterns over module names, matched against the whole name or a dotted
suffix of it: `attn.qkv` hits `blocks.0.attn.qkv`, `mlp.*` every MLP projection, `blocks.0.*` the first
block's layers, `lm_head` the output head.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import atomic_path, atomic_write_json, sha256_file

if TYPE_CHECKING:
    from lmforge.config import LoraConfig

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "lmforge-lora"


class AdapterError(LmforgeError):
    """An adapter that cannot be used: unreadable, or made for another base model."""


# ---------------------------------------------------------------------------------------------------------
# The spec and the layer
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("lora.targets is empty: name the layers to adapt (e.g. [attn.qkv, attn.out])")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, lc: LoraConfig) -> LoraSpec:
        return cls(rank=lc.rank, alpha=lc.alpha, dropout=lc.dropout, targets=list(lc.targets))


class LoRALinear(nn.Linear):
    """A Linear layer with a low-rank update: y = x W^T + b + scale * dropout(x) A^T B^T.

    It *is* an nn.Linear holding the base layer's own `weight` and `bias` parameters (frozen), so the base
    model's state-dict names stay valid; `lora_A` and `lora_B` are added beside them.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias  # a Parameter or None (then registered as None)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weights (and PEFT's A)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged_weight(self) -> Tensor:
        return self.weight + self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


# ---------------------------------------------------------------------------------------------------------
# Matching, applying, merging
# ---------------------------------------------------------------------------------------------------------


def name_matches(name: str, pattern: str) -> bool:
    """`pattern` matches the dotted `name` whole or as a suffix: `attn.qkv` matches blocks.0.attn.qkv."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def match_linears(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the Linear layers matched by any pattern; a pattern that matches none is an error."""
    names = _linear_names(model)
    matched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if name_matches(n, pattern)]
        if not hits:
            example = next((n for n in names if ".attn." in n), names[0] if names else "?")
            raise ConfigError(f"LoRA target '{pattern}' matches no Linear layer (names look like {example})")
        matched.extend(h for h in hits if h not in matched)
    return [n for n in names if n in matched]  # in model order


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Replace the Linear layers matched by `spec.targets` with LoRALinear layers (in place; returns model).

    Only the adapted layers' base weights are frozen here; `mark_only_lora_trainable` freezes the rest.
    """
    for name in match_linears(model, spec.targets):
        layer = model.get_submodule(name)
        if isinstance(layer, LoRALinear):
            raise ConfigError(f"{name} already has a LoRA adapter (merge it first)")
        lora = LoRALinear(layer, spec.rank, spec.alpha, spec.dropout)
        _set_module(model, name, lora.train(layer.training))  # an eval-mode model keeps its dropout off
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_trainable(model: nn.Module) -> nn.Module:
    """requires_grad on the lora_A / lora_B parameters only."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("lora_A", "lora_B")))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors: `<module>.lora_A` and `<module>.lora_B` for every LoRA layer."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter tensors into a model that already has the same LoRA layers (same names and shapes)."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has unexpected {unexpected[0]}"
        raise AdapterError(f"the adapter does not fit the model: it {what}")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise AdapterError(
                f"the adapter does not fit the model: {key} has shape {tuple(state[key].shape)}, "
                f"the model's is {tuple(tensor.shape)} (an adapter of another base model?)"
            )
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight (W += scale * B @ A) and put plain Linear layers back.

    A LoRA layer whose weight is shared (the output head tied to the token embedding) gets its own merged
    weight, and the model's config is marked untied, so the embedding stays the base model's.
    """
    shared = _shared_weights(model)
    for name, layer in lora_layers(model).items():
        merged = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device="meta")  # fmt: skip
        merged.weight = nn.Parameter(layer.merged_weight().detach().clone())
        if layer.bias is not None:
            merged.bias = layer.bias
            merged.bias.requires_grad_(True)
        _set_module(model, name, merged)
        if id(layer.weight) in shared:
            config = getattr(model, "config", None)
            if config is not None and getattr(config, "tie_embeddings", False):
                config.tie_embeddings = False
    return model


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def freeze(model: nn.Module, patterns: Sequence[str]) -> int:
    """Freeze (requires_grad=False) every parameter whose module or full name matches a pattern, for full
    fine-tuning of the other layers: `freeze(model, ["wte", "wpe", "blocks.0.*"])`. A tied embedding is
    the output head too. Returns how many parameter elements were frozen; a pattern matching nothing is an
    error."""
    frozen = 0
    for pattern in patterns:
        hit = False
        for name, p in model.named_parameters():
            module = name.rpartition(".")[0]
            if name_matches(name, pattern) or (module and name_matches(module, pattern)):
                hit = True
                if p.requires_grad:
                    frozen += p.numel()
                    p.requires_grad_(False)
        if not hit:
            raise ConfigError(f"freeze pattern '{pattern}' matches no parameter (names look like blocks.0.attn.qkv)")
    return frozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements, a shared tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------------------
# Adapter directories
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BaseModelRef:
    """Which base model an adapter belongs to: where it was, the sha256 of its weights, its model config."""

    path: str
    sha256: str
    model_config: dict[str, Any]

    @classmethod
    def of(cls, model_dir: str | Path, model_config: dict[str, Any]) -> BaseModelRef:
        """The reference to a base model loaded from `model_dir` (a checkpoint or Hugging Face directory,
        not a run directory: resolve that first) whose GPTConfig.to_dict() is `model_config`."""
        return cls(str(Path(model_dir).resolve()), weights_sha256(model_dir), dict(model_config))


def weights_sha256(model_dir: str | Path) -> str:
    """The identity of a model directory's weights: the sha256 of model.safetensors; for a Hugging Face
    directory of several *.safetensors files, the sha256 of their names and sha256s."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    if single.is_file():
        return sha256_file(single)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{model_dir}: no *.safetensors weights to identify the base model by")
    if len(files) == 1:
        return sha256_file(files[0])
    listing = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


@dataclass
class AdapterConfig:
    spec: LoraSpec
    modules: list[str]
    base: BaseModelRef

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ADAPTER_FORMAT,
            "version": 1,
            "rank": self.spec.rank,
            "alpha": self.spec.alpha,
            "dropout": self.spec.dropout,
            "targets": list(self.spec.targets),
            "modules": self.modules,
            "base_model": dataclasses.asdict(self.base),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> AdapterConfig:
        if d.get("format") != ADAPTER_FORMAT:
            raise AdapterError(f"{where}: not an lmforge LoRA adapter config (format {d.get('format')!r})")
        try:
            spec = LoraSpec(rank=int(d["rank"]), alpha=float(d["alpha"]), dropout=float(d["dropout"]),
                            targets=[str(t) for t in d["targets"]])  # fmt: skip
            base = d["base_model"]
            ref = BaseModelRef(str(base["path"]), str(base["sha256"]), dict(base["model_config"]))
            return cls(spec, [str(m) for m in d["modules"]], ref)
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"{where}: malformed adapter config ({type(exc).__name__}: {exc})") from None


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def save_adapter(model: nn.Module, out_dir: str | Path, spec: LoraSpec, base: BaseModelRef) -> list[Path]:
    """Write adapter.safetensors + adapter_config.json into `out_dir` (each atomically); return them."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    if not state:
        raise AdapterError("the model has no LoRA layers to save (apply_lora first)")
    config = AdapterConfig(spec, sorted(lora_layers(model)), base)
    weights, cfg_file = out_dir / ADAPTER_WEIGHTS, out_dir / ADAPTER_CONFIG
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(cfg_file, config.to_dict())
    return [weights, cfg_file]


def read_adapter(adapter_dir: str | Path) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """The adapter's config and tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_file, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{cfg_file}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{cfg_file}: expected a JSON object")
    config = AdapterConfig.from_dict(raw, str(cfg_file))
    if not weights.is_file():
        raise AdapterError(f"{adapter_dir}: {ADAPTER_WEIGHTS} missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights}: cannot read ({exc})") from None
    return config, state


def check_base(config: AdapterConfig, base_sha256: str, base_model_config: dict[str, Any], base_path: str,
               adapter_dir: str | Path) -> None:  # fmt: skip
    """Refuse, in one line, to apply an adapter over a base model other than the one it was trained on."""
    ref = config.base
    if ref.sha256 != base_sha256:
        raise AdapterError(
            f"adapter {adapter_dir} was trained on another base model: it expects weights with sha256 "
            f"{ref.sha256[:12]}… ({ref.path}), {base_path} has {base_sha256[:12]}…"
        )
    differs = sorted(k for k in ref.model_config if ref.model_config[k] != base_model_config.get(k))
    if differs:
        key = differs[0]
        raise AdapterError(
            f"adapter {adapter_dir} was trained on another base model: model config {key}="
            f"{ref.model_config[key]!r} expected, {base_path} has {base_model_config.get(key)!r}"
        )


def attach_adapter(model: nn.Module, config: AdapterConfig, state: dict[str, Tensor]) -> nn.Module:
    """Apply the adapter's LoRA layers to `model` (its base) and load the adapter's tensors."""
    apply_lora(model, config.spec)
    applied = sorted(lora_layers(model))
    if applied != sorted(config.modules):
        extra = sorted(set(applied) ^ set(config.modules))
        raise AdapterError(f"the adapter does not fit the model: layer {extra[0]} differs (another base model?)")
    load_lora_state_dict(model, state)
    return model
