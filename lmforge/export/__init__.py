"""Export: a trained model (checkpoint, run directory, LoRA adapter over its base, or Hugging Face directory)
written in another format, as a directory that other tools load.

- `hf`: a transformers directory (config.json, model.safetensors, generation_config.json, tokenizer files,
  README.md) that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load without custom code.
- `safetensors`: a clean lmforge checkpoint (model.safetensors, model_config.json, tokenizer files,
  info.json, checksums.json; no training state) that `load_model` and `train.init_from` take.
- `onnx`: model.onnx + model_with_past.onnx (KV cache) for onnxruntime, checked against PyTorch, optionally
  an int8 copy (`onnx.py`); `onnx_runner.OnnxLM` generates from it without PyTorch.

Every export directory gets a README.md model card written from the model's lineage (`model_card.py`).

`run_export` dispatches on `EXPORT_FORMATS`: a format is a module and a function
`(loaded: LoadedModel, out_dir: Path, ec: ExportConfig) -> list[Path]` that writes its files into
`out_dir` and returns them; add a format by adding an entry. A LoRA adapter is merged into its base first.
`run_merge` (adapter -> merged checkpoint) and `run_convert` (HF directory -> checkpoint) use the
`safetensors` writer.

The output directory is assembled under a temporary name beside it and renamed into place when complete,
with the run's config.yaml, logs/ and manifest.json inside it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import default_run_dir, start_run

if TYPE_CHECKING:
    from lmforge.config import Config, ExportConfig
    from lmforge.infer.load import LoadedModel

log = logging.getLogger("lmforge")

Exporter = Callable[["LoadedModel", Path, "ExportConfig"], list[Path]]
STAGES = ("export", "merge", "convert")  # an earlier output of these may be replaced


@dataclass(frozen=True)
class ExportFormat:
    module: str
    function: str
    description: str

    def load(self) -> Exporter:
        return getattr(importlib.import_module(self.module), self.function)


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "hf": ExportFormat("lmforge.export.hf", "export_hf", "Hugging Face transformers directory"),
    "safetensors": ExportFormat(
        "lmforge.export.checkpoint", "export_safetensors", "lmforge checkpoint without training state"
    ),
    "onnx": ExportFormat("lmforge.export.onnx", "export_onnx", "ONNX graphs (plain + KV cache) for onnxruntime"),
}


def get_format(name: str) -> ExportFormat:
    if name not in EXPORT_FORMATS:
        import difflib

        close = difflib.get_close_matches(name.lower(), EXPORT_FORMATS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown export format '{name}' ({hint}choose from {', '.join(EXPORT_FORMATS)})")
    return EXPORT_FORMATS[name]


# ---------------------------------------------------------------------------------------------------------
# The output directory
# ---------------------------------------------------------------------------------------------------------


def check_output_dir(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse to replace a model's own directory, or a non-empty directory that no earlier export wrote."""
    resolved = out.resolve()
    for source in sources:
        source = source.resolve()
        if resolved == source or resolved in source.parents:
            raise LmforgeError(f"output directory {out} holds the model being read ({source}); choose another")
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            if json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("stage") in STAGES:
                return
        raise LmforgeError(f"output directory {out} exists and is not empty (export.overwrite=true replaces it)")


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `out`, renamed onto `out` (replacing it) if the block completes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write(stage: str, cfg: Config, loaded: LoadedModel, fmt: str, out: Path) -> Path:
    """Write `loaded` in format `fmt` into `out` (atomically), with the run's manifest."""
    ec = cfg.export
    exporter = get_format(fmt).load()
    sources = [loaded.source]
    if loaded.adapter is not None:
        sources.append(Path(loaded.adapter["base_model"]["path"]))
    check_output_dir(out, sources, ec.overwrite)
    with staged_dir(out) as tmp, start_run(stage, cfg, tmp) as run:
        run.add_inputs(sources)
        files = exporter(loaded, tmp, ec)
        if stage == "export" and not (tmp / "README.md").exists():  # every format gets the model card
            from lmforge.export.model_card import write_model_card

            files.append(write_model_card(loaded, tmp, fmt, ec))
        for f in files:
            run.add_output(f)
        run.extra[stage] = {"format": fmt, "source": str(loaded.source), "source_kind": loaded.kind,
                            "dtype": ec.dtype, "parameters": loaded.model.num_params()}  # fmt: skip
    log.info(f"{stage}: {loaded.kind} model {loaded.source} -> {fmt} in {out}")
    return out


def run_export(cfg: Config, model: str | None = None, fmt: str | None = None, out: str | Path | None = None) -> Path:
    """`lmforge export MODEL --format F --out DIR`: returns the directory written."""
    from lmforge.infer.load import load_model

    ec = cfg.export
    fmt = fmt or ec.format
    get_format(fmt)  # an unknown format fails before the model is read
    if ec.eval_reports:  # and so does a bad evaluation report for the model card
        from lmforge.export.model_card import load_eval_report

        for report in ec.eval_reports:
            load_eval_report(report)
    model = model or ec.model
    if not model:
        raise ConfigError("export: no model given (lmforge export MODEL, or export.model=...)")
    target = Path(out or ec.out or default_run_dir(cfg, "export"))
    return _write("export", cfg, load_model(model, base=ec.base), fmt, target)


def run_merge(cfg: Config, adapter: str | None = None, out: str | Path | None = None) -> Path:
    """`lmforge merge ADAPTER_DIR --out DIR`: the adapter folded into its base, as a plain checkpoint."""
    from lmforge.infer.load import is_adapter_dir, load_model

    ec = cfg.export
    adapter = adapter or ec.model
    if not adapter:
        raise ConfigError("merge: no adapter directory given (lmforge merge ADAPTER_DIR --out DIR)")
    if not Path(adapter).exists():
        raise LmforgeError(f"no such adapter: {adapter}")
    if not is_adapter_dir(Path(adapter)):
        raise LmforgeError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    target = Path(out or ec.out or default_run_dir(cfg, "merge"))
    return _write("merge", cfg, load_model(adapter, base=ec.base), "safetensors", target)


def run_convert(cfg: Config, hf_dir: str | None = None, out: str | Path | None = None) -> Path:
    """`lmforge convert HF_DIR --out DIR`: a Hugging Face causal LM as an lmforge checkpoint."""
    from lmforge.infer.load import is_hf_dir, load_model

    ec = cfg.export
    hf_dir = hf_dir or ec.model
    if not hf_dir:
        raise ConfigError("convert: no Hugging Face directory given (lmforge convert HF_DIR --out DIR)")
    if not Path(hf_dir).exists():
        raise LmforgeError(f"no such model: {hf_dir}")
    if not is_hf_dir(Path(hf_dir)):
        raise LmforgeError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    target = Path(out or ec.out or default_run_dir(cfg, "convert"))
    return _write("convert", cfg, load_model(hf_dir), "safetensors", target)
