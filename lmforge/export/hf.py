"""The `hf` export format: a directory that transformers loads with no custom code.

- config.json: LlamaForCausalLM for the llama flavour (Qwen2ForCausalLM when only q/k/v have biases),
  GPT2LMHeadModel (activation gelu_new) for the gpt2 flavour; written through transformers' own config
  class when transformers is installed (the `hf` extra), else as the plain dict.
- model.safetensors: the weights under transformers' names (`to_hf_state_dict`); a tied output head is
  left out (safetensors holds no shared tensors; transformers re-ties it from tie_word_embeddings).
- generation_config.json (bos/eos/pad ids), the tokenizer files, and the README.md model card
  (`model_card.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.export.common import cast_state, plain_model, token_id, write_tokenizer_files
from lmforge.export.model_card import write_model_card
from lmforge.model.hf_convert import config_to_hf, to_hf_state_dict

if TYPE_CHECKING:
    from lmforge.config import ExportConfig
    from lmforge.infer.load import LoadedModel

TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export_hf(loaded: LoadedModel, out_dir: Path, ec: ExportConfig) -> list[Path]:
    """Write the transformers directory's files into `out_dir`; return them."""
    from safetensors.torch import save_file

    model = plain_model(loaded)
    cfg = model.config
    ids = {f"{name}_token_id": token_id(loaded, f"{name}_token") for name in ("bos", "eos", "pad")}
    fields = config_to_hf(cfg, **ids)
    fields["dtype"] = TORCH_DTYPE_NAMES[ec.dtype]
    files = [_write_config(fields, out_dir), _write_generation_config(ids, out_dir)]

    hf_state = to_hf_state_dict(cfg.flavour, cast_state(model.state_dict(), ec.dtype), cfg)
    if cfg.tie_embeddings:
        del hf_state["lm_head.weight"]
    # safetensors refuses tensors that share memory (the q/k/v split is a view of our fused qkv): copy each.
    tensors = {k: v.clone().contiguous() for k, v in hf_state.items()}
    files.append(out_dir / "model.safetensors")
    save_file(tensors, str(files[-1]), metadata={"format": "pt"})

    files += write_tokenizer_files(loaded, out_dir, cfg.block_size)
    files.append(write_model_card(loaded, out_dir, "hf", ec))  # after config.json: the card names its class
    return files


def _write_config(fields: dict[str, Any], out_dir: Path) -> Path:
    """config.json through transformers' config class when available (it adds its defaults and version)."""
    path = out_dir / "config.json"
    try:
        from transformers import AutoConfig
    except ImportError:
        path.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        kwargs = {k: v for k, v in fields.items() if k != "model_type"}
        AutoConfig.for_model(fields["model_type"], **kwargs).save_pretrained(str(out_dir))
    return path


def _write_generation_config(ids: dict[str, int | None], out_dir: Path) -> Path:
    path = out_dir / "generation_config.json"
    try:
        from transformers import GenerationConfig
    except ImportError:
        path.write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
    else:
        GenerationConfig(**ids).save_pretrained(str(out_dir))
    return path
