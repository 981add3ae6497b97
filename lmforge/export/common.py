"""What every export format needs: the plain model (LoRA merged), weights in the chosen dtype, and the
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) that AutoTokenizer loads."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import LmforgeError
from lmforge.model.gpt import GPT
from lmforge.runs import atomic_write_json
from lmforge.tokenizer import CONFIG_FILE, SPECIAL_TOKENS_FILE, TOKENIZER_FILE

if TYPE_CHECKING:
    from lmforge.errors import LmforgeError
from lmforge.infer.load import LoadedModel

log = logging.getLogger("lmforge")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")


def plain_model(loaded: LoadedModel) -> GPT:
    """The model with any LoRA adapter folded into its weights (in place), on the CPU."""
    from lmforge.model.lora import lora_layers, merge_lora

    if loaded.kind == "quantized":  # torchao's int8 tensors have no plain weights to write out
        raise LmforgeError(
            f"{loaded.source}: a quantized model cannot be exported; export the fp32 model it came from "
            "(ONNX int8: `lmforge export --format onnx export.onnx_int8=true`)"
        )
    model = loaded.model.cpu().eval()
    if lora_layers(model):
        merge_lora(model)
    return model


def cast_state(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors in `dtype` (fp32, bf16, fp16), detached on the CPU; tied tensors stay one."""
    target = DTYPES[dtype]
    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in state.items():
        key = id(tensor) if tensor.numel() == 0 else tensor.data_ptr()
        if key not in done:
            t = tensor.detach().cpu()
            done[key] = t.to(target) if t.is_floating_point() else t
        out[name] = done[key]
    return out


def _tokenizer_source(loaded: LoadedModel) -> Path | None:
    """The tokenizer.json the model's tokenizer was read from (so it is copied byte for byte), if found."""
    from tokenizers import Tokenizer

    if loaded.tokenizer is None:
        return None
    dirs = [loaded.source, loaded.source.parent.parent]
    if loaded.adapter is not None:
        dirs.insert(1, Path(loaded.adapter["base_model"]["path"]))
    wanted = loaded.tokenizer.to_str()
    for d in dirs:
        file = d / TOKENIZER_FILE
        if file.is_file():
            try:
                if Tokenizer.from_file(str(file)).to_str() == wanted:
                    return file
            except Exception:  # a malformed file is just not the one
                continue
    return None


def token_id(loaded: LoadedModel, key: str) -> int | None:
    """The id of the tokenizer config's `key` token (bos_token, eos_token, pad_token), if it has one."""
    token = loaded.tokenizer_config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    if loaded.tokenizer is None or not isinstance(token, str) or not token:
        return loaded.eos_id if key == "eos_token" else None
    found = loaded.tokenizer.token_to_id(token)
    return loaded.eos_id if found is None and key == "eos_token" else found


def tokenizer_config_for(loaded: LoadedModel, model_max_length: int) -> dict[str, Any]:
    """The model's tokenizer_config.json, completed so that AutoTokenizer loads it as a fast tokenizer."""
    config = dict(loaded.tokenizer_config)
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("model_max_length", model_max_length)
    config.setdefault("clean_up_tokenization_spaces", False)
    eos = loaded.eos_id
    if "eos_token" not in config and eos is not None and loaded.tokenizer is not None:
        token = loaded.tokenizer.id_to_token(eos)
        if token is not None:
            config["eos_token"] = token
    return config


def write_tokenizer_files(loaded: LoadedModel, out_dir: Path, model_max_length: int) -> list[Path]:
    """tokenizer.json (copied when its file is found), tokenizer_config.json, special_tokens_map.json."""
    if loaded.tokenizer is None:
        log.warning(f"no tokenizer found for {loaded.source}: the export has none")
        return []
    tok_file = out_dir / TOKENIZER_FILE
    source = _tokenizer_source(loaded)
    if source is not None:
        shutil.copyfile(source, tok_file)
    else:
        tok_file.write_text(loaded.tokenizer.to_str(pretty=True), encoding="utf-8")
    config = tokenizer_config_for(loaded, model_max_length)
    atomic_write_json(out_dir / CONFIG_FILE, config)
    special = {k: config[k] for k in SPECIAL_KEYS if k in config}
    if source is not None and (source.parent / SPECIAL_TOKENS_FILE).is_file():
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):  # else: derived from the config
            special = json.loads((source.parent / SPECIAL_TOKENS_FILE).read_text(encoding="utf-8"))
    atomic_write_json(out_dir / SPECIAL_TOKENS_FILE, special)
    return [tok_file, out_dir / CONFIG_FILE, out_dir / SPECIAL_TOKENS_FILE]
