"""Load a model for inference from an lmforge checkpoint (or run directory), a LoRA adapter directory
(over its base model) or a Hugging Face directory (GPT-2, Llama, Mistral, Qwen2 causal LMs).

All give our `GPT` plus its tokenizer, so generation, evaluation and serving have one code path.
Hugging Face weights are read from safetensors only: we never unpickle a file a user hands us.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import LmforgeError
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer import CONFIG_FILE, TOKENIZER_FILE, load_tokenizer, read_tokenizer_config

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer | None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    source: Path = Path(".")
    kind: str = "lmforge"  # or "hf", or "lora" (an adapter applied over its base: the model has LoRA layers)
    model_eos_id: int | None = None  # from the checkpoint's info.json or the HF config, when the tokenizer
    # config does not name an EOS token
    adapter: dict[str, Any] | None = None  # kind "lora": the adapter_config.json, base_model.path as loaded

    @property
    def eos_id(self) -> int | None:
        token = self.tokenizer_config.get("eos_token")
        if isinstance(token, dict):
            token = token.get("content")
        if self.tokenizer is not None and token:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return found
        return self.model_eos_id


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "model_config.json").is_file()


def _find_tokenizer(*dirs: Path) -> tuple[Tokenizer | None, dict[str, Any]]:
    """The first tokenizer.json among `dirs`; its tokenizer_config.json (chat template, special tokens) from
    the same directory, else from the first later one that has both files with an identical tokenizer.json
    (a checkpoint copies only tokenizer.json; the shard directory it was trained on has the config)."""
    for i, d in enumerate(dirs):
        if (d / TOKENIZER_FILE).is_file():
            tok_file = d / TOKENIZER_FILE
            tok_cfg: dict[str, Any] = {}
            for other in dirs[i:]:
                same = other == d or (
                    (other / TOKENIZER_FILE).is_file()
                    and (other / TOKENIZER_FILE).read_bytes() == tok_file.read_bytes()
                )
                if same and (other / CONFIG_FILE).is_file():
                    tok_cfg = read_tokenizer_config(other)
                    break
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
    info = read_json(ckpt, "info.json")
    dirs = [ckpt, ckpt.parent.parent, path]
    if isinstance(info.get("data"), str):
        dirs.append(Path(info["data"]))
    tokenizer, tok_cfg = _find_tokenizer(*dirs)
    eos = info.get("eos_id")
    return LoadedModel(model, tokenizer, tok_cfg, ckpt, "lmforge", eos if isinstance(eos, int) else None)


def _load_hf(path: Path) -> LoadedModel:
    from safetensors.torch import load_file

    from lmforge.model.hf_convert import config_from_hf, from_hf_state_dict

    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{path / 'config.json'}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path / 'config.json'}: expected a JSON object")
    try:
        cfg = config_from_hf(raw)
    except LmforgeError as exc:
        raise LmforgeError(f"{path}: {exc}") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LmforgeError(f"{path}: no *.safetensors weights (pickled .bin files are not loaded)")
    hf_state: dict[str, torch.Tensor] = {}
    for f in files:
        hf_state.update(load_file(str(f)))
    if cfg.flavour == "gpt2" and "transformer.wte.weight" not in hf_state:  # the original GPT-2 uploads
        hf_state = {k if k.startswith("lm_head.") else f"transformer.{k}": v for k, v in hf_state.items()}
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
    return LoadedModel(model, tokenizer, tok_cfg, path, "hf", _hf_eos_id(path, raw))


def _hf_eos_id(path: Path, config: dict[str, Any]) -> int | None:
    """eos_token_id of generation_config.json, else of config.json (the first one, if a list)."""
    sources = [config]
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            sources.insert(0, json.loads(gen_file.read_text(encoding="utf-8")))
    for source in sources:
        eos = source.get("eos_token_id") if isinstance(source, dict) else None
        if isinstance(eos, list) and eos:
            eos = eos[0]
        if isinstance(eos, int):
            return eos
    return None


def _load_adapter(path: Path, base: str | Path | None) -> LoadedModel:
    """The adapter's base model (`base`, else the path adapter_config.json records) with the adapter
    applied; refused, in one line, when the base is not the model the adapter was trained on."""
    from lmforge.model.lora import attach_adapter, check_base, read_adapter, weights_sha256

    config, state = read_adapter(path)
    base_path = Path(base) if base is not None else Path(config.base.path)
    if not base_path.exists():
        hint = "" if base is not None else " (recorded in adapter_config.json; give the base explicitly)"
        raise LmforgeError(f"adapter {path}: base model {base_path} not found{hint}")
    if is_adapter_dir(base_path):
        raise LmforgeError(f"adapter {path}: its base {base_path} is itself an adapter (merge that one first)")
    loaded = _load_hf(base_path) if is_hf_dir(base_path) else _load_lmforge(base_path)
    check_base(config, weights_sha256(loaded.source), loaded.model.config.to_dict(), str(loaded.source), path)
    attach_adapter(loaded.model, config, state)
    if (path / TOKENIZER_FILE).is_file():  # an adapter may carry its (the base's) tokenizer
        loaded.tokenizer, loaded.tokenizer_config = _find_tokenizer(path, loaded.source)
    adapter = config.to_dict()
    adapter["base_model"]["path"] = str(loaded.source)
    loaded.source, loaded.kind, loaded.adapter = path, "lora", adapter
    return loaded


def is_adapter_dir(path: Path) -> bool:
    from lmforge.model.lora import is_adapter_dir as has_adapter_config

    return has_adapter_config(path)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               base: str | Path | None = None) -> LoadedModel:  # fmt: skip
    """Our GPT in eval mode, from a checkpoint dir, a run dir (its newest good checkpoint), a LoRA adapter
    dir (over `base`, else the base its adapter_config.json records), an int8 model of `lmforge quantize`
    (quantization.json) or an HF dir."""
    from lmforge.compress.quantize import find_quantized_dir  # cheap: torchao is imported only to load one

    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such model: {path}")
    if is_adapter_dir(path):
        loaded = _load_adapter(path, base)
    elif base is not None:
        raise LmforgeError(f"{path} is not a LoRA adapter directory (no adapter_config.json), so it takes no base")
    elif (quantized := find_quantized_dir(path)) is not None:
        from lmforge.compress.quantize import load_quantized

        loaded = load_quantized(quantized)
    else:
        loaded = _load_hf(path) if is_hf_dir(path) else _load_lmforge(path)
    loaded.model.to(device=device, dtype=dtype).eval()
    return loaded
