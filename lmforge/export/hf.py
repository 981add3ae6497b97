"""The `hf` export format: a directory that transformers loads with no custom code.

- config.json: LlamaForCausalLM for the llama flavour (Qwen2ForCausalLM when only q/k/v have biases),
  GPT2LMHeadModel (activation gelu_new) for the gpt2 flavour; written through transformers' own config
  class when transformers is installed (the `hf` extra), else as the plain dict.
- model.safetensors: the weights under transformers' names (`to_hf_state_dict`); a tied output head is
  left out (safetensors holds no shared tensors; transformers re-ties it from tie_word_embeddings).
- generation_config.json (bos/eos/pad ids), the tokenizer files, and a README.md model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.export.common import DTYPES, cast_state, plain_model, token_id, write_tokenizer_files
from lmforge.model.hf_convert import config_to_hf, to_hf_state_dict

if TYPE_CHECKING:
    from lmforge.config import ExportConfig
    from lmforge.infer.load import LoadedModel
    from lmforge.model.gpt import GPT

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
    files.append(out_dir / "README.md")
    files[-1].write_text(model_card(loaded, model, fields, ec), encoding="utf-8")
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


def model_card(loaded: LoadedModel, model: GPT, fields: dict[str, Any], ec: ExportConfig) -> str:
    """A basic README.md: architecture, size, where it came from, its tokenizer, and how to load it."""
    cfg = model.config
    arch = fields["architectures"][0]
    heads = f"{cfg.n_head} heads" + (f" ({cfg.n_kv_head} key/value heads)" if cfg.n_kv_head != cfg.n_head else "")
    vocab = loaded.tokenizer.get_vocab_size(with_added_tokens=True) if loaded.tokenizer is not None else None
    tokenizer = (
        f"`tokenizer.json` ({loaded.tokenizer_config.get('lmforge_kind', 'fast')} tokenizer, {vocab:,} tokens)"
        if vocab is not None
        else "none exported (no tokenizer was found beside the model)"
    )
    source = f"`{loaded.source}` ({loaded.kind})"
    if loaded.adapter is not None:
        base = loaded.adapter["base_model"]
        source += f", LoRA rank {loaded.adapter['rank']} merged into base `{base['path']}`"
    dtype_bytes = DTYPES[ec.dtype].itemsize
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- lmforge
---

# {_title(loaded.source)}

A decoder-only language model made with lmforge, exported as `{arch}`.

| | |
|---|---|
| Architecture | `{arch}` (lmforge flavour `{cfg.flavour}`) |
| Parameters | {model.num_params():,} ({model.num_params() * dtype_bytes / 1e6:.1f} MB in {ec.dtype}) |
| Shape | {cfg.n_layer} layers, {cfg.n_embd} hidden, {heads}, {cfg.intermediate_size} MLP |
| Context | {cfg.block_size} tokens |
| Vocabulary | {cfg.vocab_size:,} |
| Tied embeddings | {cfg.tie_embeddings} |
| Source checkpoint | {source} |
| Tokenizer | {tokenizer} |

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")
model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")
ids = tokenizer("Hello", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=False)[0]))
```
"""


def _title(source: Path) -> str:
    """`run/step-0001000` for a checkpoint of a run, else the directory's name."""
    source = Path(source).resolve()
    if source.name.startswith("step-") and source.parent.name == "checkpoints":
        return f"{source.parent.parent.name}/{source.name}"
    return source.name or "model"
