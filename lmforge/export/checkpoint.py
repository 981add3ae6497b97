"""The `safetensors` export format: a clean lmforge checkpoint directory.

model.safetensors (tied tensors stored once), model_config.json, the tokenizer files, info.json (where it
came from, eos id, tokenizer sha256) and checksums.json: what `load_model`, `evaluate` and
`train.init_from` take. No training state: fine-tuning from it starts a new optimizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.export.common import cast_state, plain_model, write_tokenizer_files
from lmforge.runs import sha256_file
from lmforge.tokenizer import TOKENIZER_FILE
from lmforge.train.checkpoint import save_model_file

if TYPE_CHECKING:
    from lmforge.config import ExportConfig
    from lmforge.infer.load import LoadedModel


def export_safetensors(loaded: LoadedModel, out_dir: Path, ec: ExportConfig) -> list[Path]:
    """Write the checkpoint files into `out_dir`; return them."""
    model = plain_model(loaded)
    cfg = model.config
    files = [out_dir / "model.safetensors", out_dir / "model_config.json"]
    save_model_file(cast_state(model.state_dict(), ec.dtype), files[0], metadata={"dtype": ec.dtype})
    files[1].write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    files += write_tokenizer_files(loaded, out_dir, cfg.block_size)
    info = {
        "stage": "export",
        "source": str(loaded.source),
        "source_kind": loaded.kind,
        "eos_id": loaded.eos_id,
        "vocab_size": cfg.vocab_size,
    }
    if loaded.adapter is not None:
        info["adapter"] = loaded.adapter
    if (out_dir / TOKENIZER_FILE).is_file():
        info["tokenizer_sha256"] = sha256_file(out_dir / TOKENIZER_FILE)
    files.append(out_dir / "info.json")
    files[-1].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    sums = {p.name: sha256_file(p) for p in files}
    files.append(out_dir / "checksums.json")
    files[-1].write_text(json.dumps({"sha256": sums}, indent=2) + "\n", encoding="utf-8")
    return files
