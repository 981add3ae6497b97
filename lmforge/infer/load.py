"""Load a model for inference from an lmforge checkpoint (or run directory) or a Hugging Face directory.

Both give our `GPT` plus its tokenizer, so generation, evaluation and serving have one code path.
Hugging Face weights are read from safetensors only: we never unpickle a file a user hands us.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import LmforgeError
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer import CONFIG_FILE, TOKENIZER_FILE, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer | None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    source: Path = Path(".")
    kind: str = "lmforge"  # or "hf"

    @property
    def eos_id(self) -> int | None:
        token = self.tokenizer_config.get("eos_token")
        if isinstance(token, dict):
            token = token.get("content")
        if self.tokenizer is None or not token:
            return None
        return self.tokenizer.token_to_id(token)


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "model_config.json").is_file()


def _find_tokenizer(*dirs: Path) -> tuple[Tokenizer | None, dict[str, Any]]:
    for d in dirs:
        if (d / TOKENIZER_FILE).is_file():
            tok_cfg_file = d / CONFIG_FILE
            tok_cfg = json.loads(tok_cfg_file.read_text(encoding="utf-8")) if tok_cfg_file.is_file() else {}
            return load_tokenizer(d), tok_cfg
    return None, {}


def _load_lmforge(path: Path) -> LoadedModel:
    from lmforge.train.checkpoint import check_shapes, load_model_state, read_json, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model_cfg = read_json(ckpt, "model_config.json")
    if not model_cfg:
        raise LmforgeError(f"checkpoint {ckpt} has no model_config.json")
    model = GPT(GPTConfig.from_dict(model_cfg))
    state = load_model_state(ckpt)
    check_shapes(ckpt, state, model.state_dict())
    model.load_state_dict(state)
    # The tokenizer travels with the checkpoint; older runs may keep it only in the run or shard dir.
    tokenizer, tok_cfg = _find_tokenizer(ckpt, ckpt.parent.parent, path)
    return LoadedModel(model, tokenizer, tok_cfg, ckpt, "lmforge")


def _load_hf(path: Path) -> LoadedModel:
    from safetensors.torch import load_file

    from lmforge.model.hf_convert import config_from_hf, from_hf_state_dict

    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{path / 'config.json'}: not valid JSON ({exc.msg})") from None
    cfg = config_from_hf(SimpleNamespace(**raw))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LmforgeError(f"{path}: no *.safetensors weights (pickled .bin files are not loaded)")
    hf_state: dict[str, torch.Tensor] = {}
    for f in files:
        hf_state.update(load_file(str(f)))
    if "lm_head.weight" not in hf_state:  # tied checkpoints may omit the head
        embed = "transformer.wte.weight" if cfg.flavour == "gpt2" else "model.embed_tokens.weight"
        hf_state["lm_head.weight"] = hf_state[embed]
    model = GPT(cfg)
    try:
        state = from_hf_state_dict(cfg.flavour, hf_state, cfg)
    except KeyError as exc:
        raise LmforgeError(f"{path}: weights lack tensor {exc.args[0]}") from None
    model.load_state_dict(state)
    tokenizer, tok_cfg = _find_tokenizer(path)
    return LoadedModel(model, tokenizer, tok_cfg, path, "hf")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Our GPT in eval mode, from a checkpoint dir, a run dir (its newest good checkpoint) or an HF dir."""
    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such model: {path}")
    loaded = _load_hf(path) if is_hf_dir(path) else _load_lmforge(path)
    loaded.model.to(device=device, dtype=dtype).eval()
    return loaded
