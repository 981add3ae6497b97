"""`lmforge quantize`: int8 Linear layers with torchao, saved as a directory `load_model` recognises.

Methods (`compress.quantize.method`), both torchao `quantize_` configs over the model's `nn.Linear` layers:
- `int8_weight_only` (`Int8WeightOnlyConfig`): int8 weights with a float scale per output row; activations
  stay float and the weight is widened in the matmul.
- `int8_dynamic` (`Int8DynamicActivationInt8WeightConfig`): int8 weights as above, and each activation row
  quantized to int8 on the fly, so the matmul is int8 x int8.
With tied embeddings the output head is the embedding table and stays in float; `compress.quantize.skip`
keeps more layers in float (fnmatch over module names, e.g. `blocks.0.*`). The embedding tables are stored as
int8 with a scale per row (`compress.quantize.embeddings`) and widened to float when loaded: they are a large
part of the file of a small model, and an int8 lookup in torchao widens the whole table at every call.

The quantized model is a directory (`<run>/model/`): `quantized.safetensors` (torchao's safetensors layout:
each quantized weight as its int8 values and scales plus a JSON description in the header, rebuilt from
an allow-list of torchao classes, never unpickled), `model_config.json`, the tokenizer files, `info.json`,
`quantization.json` (the marker: method, library version, quantized modules) and `checksums.json`. It is
assembled under a temporary name and renamed into place. `load_model` dispatches here when it finds
`quantization.json` in the directory (or in its `model/`), so `lmforge generate`, `evaluate` and `serve`
take a quantized model like any other.

An `.onnx` model (or an ONNX export directory) goes to `lmforge.export.onnx.quantize_onnx` instead:
onnxruntime's dynamic int8 quantization.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.compress.compare import (
    build_report,
    check_shards_fit,
    measure,
    resolve_shards,
    timing_prompt,
    val_split,
    write_report,
)
from lmforge.config import CompressEvalConfig, Config
from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import sha256_file, start_run

if TYPE_CHECKING:
    from lmforge.infer.load import LoadedModel
    from lmforge.model.gpt import GPT
    from lmforge.train.data import TokenSplit

log = logging.getLogger("lmforge")

MARKER = "quantization.json"
WEIGHTS_FILE = "quantized.safetensors"
MODEL_DIR = "model"  # the quantized model inside a quantize run directory
FORMAT, FORMAT_VERSION = "lmforge-quantized", 1
METHODS = {  # method -> torchao config class
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
}


def find_quantized_dir(path: Path) -> Path | None:
    """The quantized model directory at `path` (or in a quantize run's `model/`), else None. Cheap: no
    torchao import, so `load_model` can ask on every call."""
    for candidate in (path, path / MODEL_DIR):
        if (candidate / MARKER).is_file():
            return candidate
    return None


class _EnumRegistrationNoise(logging.Filter):
    """torch warns each time torchao registers one of its enums with pytree (deprecated, harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass" not in record.getMessage()


@contextlib.contextmanager
def quiet_torchao() -> Iterator[None]:
    """Keep torchao's import-time warnings about kernels this machine cannot load (CUDA-only libraries) off
    the console, and torch's about the enums it registers (whenever that happens): not the user's problem."""
    pytree = logging.getLogger("torch.utils._pytree")
    if not any(isinstance(f, _EnumRegistrationNoise) for f in pytree.filters):
        pytree.addFilter(_EnumRegistrationNoise())
    torchao_log = logging.getLogger("torchao")
    level = torchao_log.level
    torchao_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torchao_log.setLevel(level)


def import_torchao() -> ModuleType:
    """torchao.quantization (imported quietly), or a one-line error naming the missing package."""
    with quiet_torchao():
        try:
            import torchao.quantization as tq
        except ImportError:
            raise LmforgeError("quantization needs torchao: pip install torchao") from None
    return tq


# ---------------------------------------------------------------------------------------------------------
# Quantizing, saving, loading
# ---------------------------------------------------------------------------------------------------------


def quantize_model(model: GPT, method: str, skip: list[str] | None = None) -> list[str]:
    """Quantize the model's Linear layers in place with torchao; returns the names of those quantized."""
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method '{method}' (choose from {', '.join(METHODS)})")
    tq = import_torchao()
    tied = model.config.tie_embeddings
    chosen = [
        name for name, module in model.named_modules()
        if type(module) is nn.Linear
        and not (tied and name == "lm_head")  # the head is the (float) embedding table
        and not any(fnmatch(name, pattern) for pattern in skip or [])
    ]  # fmt: skip
    if not chosen:
        raise ConfigError("no Linear layer left to quantize (see compress.quantize.skip)")
    wanted = set(chosen)
    with quiet_torchao():
        tq.quantize_(model, getattr(tq, METHODS[method])(), filter_fn=lambda _m, fqn: fqn in wanted)
    return chosen


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `final`, renamed onto it (replacing an older one) when the block
    completes; removed if it fails."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


EMBEDDINGS = ("wte.weight", "wpe.weight")


def save_quantized(model: GPT, out: Path, marker: dict[str, Any], loaded: LoadedModel, info: dict[str, Any],
                   int8_embeddings: bool = True) -> Path:  # fmt: skip
    """Write the quantized model directory `out` (atomically); returns it. `int8_embeddings`: store the float
    embedding tables as int8 with per-row scales (listed in the marker's `int8_storage`)."""
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tq = import_torchao()
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the embedding table, re-tied on load
    marker = {**marker, "int8_storage": []}
    if int8_embeddings:
        for name in EMBEDDINGS:
            if type(state.get(name)) is torch.Tensor:
                state[name] = tq.Int8Tensor.from_hp(state[name].float(), tq.PerRow())
                marker["int8_storage"].append(name)
    tensors, header = flatten_tensor_state_dict(state)
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={**header, "format": "pt"})  # fmt: skip
        _write_json(tmp / "model_config.json", model.config.to_dict())
        if loaded.tokenizer is not None:
            from lmforge.tokenizer import CONFIG_FILE, TOKENIZER_FILE

            loaded.tokenizer.save(str(tmp / TOKENIZER_FILE))
            if loaded.tokenizer_config:
                _write_json(tmp / CONFIG_FILE, loaded.tokenizer_config)
        _write_json(tmp / "info.json", info)
        _write_json(tmp / MARKER, marker)
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        _write_json(tmp / "checksums.json", {"sha256": sums})
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path}: unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise LmforgeError(f"{path}: expected a JSON object")
    return value


def verify_checksums(path: Path) -> None:
    sums = _read_json(path / "checksums.json").get("sha256")
    if not isinstance(sums, dict) or WEIGHTS_FILE not in sums:
        raise LmforgeError(f"{path / 'checksums.json'}: no checksum of {WEIGHTS_FILE}")
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            raise LmforgeError(f"quantized model {path}: {name} missing")
        if sha256_file(file) != expected:
            raise LmforgeError(f"quantized model {path}: {name} does not match its checksum (truncated or corrupt)")


def load_quantized(path: Path) -> LoadedModel:
    """The quantized model directory `path` as a LoadedModel (kind "quantized") on the CPU, in eval mode."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from lmforge.infer.load import LoadedModel
    from lmforge.model.gpt import GPT, GPTConfig
    from lmforge.tokenizer import CONFIG_FILE, TOKENIZER_FILE, load_tokenizer, read_tokenizer_config

    marker = _read_json(path / MARKER)
    if marker.get("format") != FORMAT or marker.get("version") != FORMAT_VERSION:
        raise LmforgeError(f"{path / MARKER}: not an lmforge quantized model of format version {FORMAT_VERSION}")
    if marker.get("method") not in METHODS:
        raise LmforgeError(f"{path / MARKER}: unknown quantization method {marker.get('method')!r}")
    verify_checksums(path)
    import_torchao()  # its tensor classes must be importable to rebuild the weights
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    cfg = GPTConfig.from_dict(_read_json(path / "model_config.json"))
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            header = f.metadata() or {}
        with quiet_torchao():
            state, leftover = unflatten_tensor_state_dict(load_file(str(path / WEIGHTS_FILE)), header)
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise LmforgeError(f"quantized model {path}: cannot read {WEIGHTS_FILE} ({exc})") from None
    for name in marker.get("int8_storage", []):  # stored int8, used in float
        if name in state:
            state[name] = state[name].dequantize()
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = GPT(cfg)
    result = model.load_state_dict(state, strict=False, assign=True)
    tied_head = cfg.tie_embeddings and "lm_head.weight" not in state
    if tied_head:
        model.lm_head.weight = model.wte.weight
    missing = [k for k in result.missing_keys if not (tied_head and k == "lm_head.weight")]
    if missing or result.unexpected_keys or leftover:
        what = missing or result.unexpected_keys or sorted(leftover)
        raise LmforgeError(f"quantized model {path} does not fit its model_config.json ({what[0]})")
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = load_tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None
    tok_cfg = read_tokenizer_config(path) if (path / CONFIG_FILE).is_file() else {}
    eos = _read_json(path / "info.json").get("eos_id") if (path / "info.json").is_file() else None
    return LoadedModel(model.eval(), tokenizer, tok_cfg, path, "quantized", eos if isinstance(eos, int) else None)


# ---------------------------------------------------------------------------------------------------------
# `lmforge quantize`
# ---------------------------------------------------------------------------------------------------------


def onnx_source(path: Path) -> Path | None:
    """The float ONNX model to quantize: `path` itself (.onnx), or the one `.onnx` of an export directory."""
    if path.is_file():
        return path if path.suffix == ".onnx" else None
    if (path / "model_config.json").is_file() or (path / "config.json").is_file():
        return None  # a checkpoint or HF directory (an ONNX export beside it is not what was named)
    if (path / "model.onnx").is_file():  # an lmforge ONNX export (its KV-cache sibling goes along)
        return path / "model.onnx"
    found = [f for f in sorted(path.glob("*.onnx")) if ".int8" not in f.name and "_with_past" not in f.name]
    if len(found) > 1:
        raise LmforgeError(f"{path}: several .onnx models ({', '.join(f.name for f in found)}); name one")
    return found[0] if found else None


def run_quantize(cfg: Config, out: str | Path | None = None) -> dict[str, Any]:
    """Quantize compress.model; returns the report (also `<run>/compress_report.json`)."""
    from lmforge.infer.load import load_model

    qc, ec = cfg.compress.quantize, cfg.compress.eval
    if not cfg.compress.model:
        raise ConfigError("no model given: lmforge quantize MODEL (a checkpoint, run, HF directory or .onnx)")
    path = Path(cfg.compress.model)
    if not path.exists():
        raise LmforgeError(f"no such model: {path}")
    onnx = onnx_source(path)
    if onnx is not None:
        return run_quantize_onnx(cfg, onnx, out)
    if find_quantized_dir(path) is not None:
        raise LmforgeError(f"{path} is already quantized ({_read_json(find_quantized_dir(path) / MARKER).get('method')})")  # type: ignore[operator]
    if qc.method not in METHODS:
        raise ConfigError(f"unknown quantization method '{qc.method}' (choose from {', '.join(METHODS)})")
    import_torchao()  # fail before any work when it is missing
    loaded = load_model(path)
    if loaded.kind == "lora":
        from lmforge.model.lora import merge_lora

        merge_lora(loaded.model)
    source_dir = loaded.source if loaded.source.is_dir() else loaded.source.parent
    meta = resolve_shards(cfg.compress.data, source_dir)
    if meta is not None:
        check_shards_fit(meta, loaded.model.config.vocab_size, f"model {path}")
    split = val_split(meta)
    device = torch.device("cpu")  # torchao's int8 CPU paths; the report's timings are CPU timings

    with start_run("quantize", cfg, out) as run:
        run.add_inputs([f for f in source_dir.iterdir() if f.is_file()])
        log.info("quantize: measuring the float model ...")
        before = measure(loaded.model, source_dir, split, ec, device)
        modules = quantize_model(loaded.model, qc.method, qc.skip)
        tq_version = _torchao_version()
        marker = {
            "format": FORMAT, "version": FORMAT_VERSION, "method": qc.method, "library": "torchao",
            "library_version": tq_version, "config": METHODS[qc.method], "modules": modules,
            "source": str(loaded.source),
        }  # fmt: skip
        info = {"stage": "quantize", "eos_id": loaded.eos_id, "source": str(loaded.source),
                "data": str(meta.dir) if meta is not None else None}  # fmt: skip
        model_dir = save_quantized(loaded.model, run.dir / MODEL_DIR, marker, loaded, info, qc.embeddings)
        del loaded
        log.info("quantize: %d Linear layers as %s; measuring the saved model ...", len(modules), qc.method)
        reloaded = load_quantized(model_dir)  # measure what was written: it also proves that it loads
        after = measure(reloaded.model, model_dir / WEIGHTS_FILE, split, ec, device)
        details = {"library": f"torchao {tq_version}", "quantized_modules": modules,
                   "data": str(meta.dir) if meta is not None else None}  # fmt: skip
        report = build_report("quantize", qc.method, str(path), str(model_dir), before, after, details)
        write_report(run, report)
        run.add_output(model_dir)
    return report


def _torchao_version() -> str:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("torchao")
    return "unknown"


def run_quantize_onnx(cfg: Config, source: Path, out: str | Path | None) -> dict[str, Any]:
    """An ONNX model through the ONNX exporter's `quantize_onnx` (onnxruntime dynamic int8), measured before
    and after with onnxruntime. The output directory (`<run>/onnx/`) is an ONNX export of its own: the int8
    graphs (plain and KV-cache) as model.onnx / model_with_past.onnx, and the tokenizer files."""
    try:
        from lmforge.export.onnx import quantize_onnx
    except ImportError as exc:
        raise LmforgeError(f"quantizing {source} needs lmforge.export.onnx with onnxruntime ({exc})") from None
    meta = resolve_shards(cfg.compress.data, None)
    split = val_split(meta)
    ec = cfg.compress.eval
    with start_run("quantize", cfg, out) as run:
        run.add_inputs([source])
        before = measure_onnx(source, split, ec)
        with atomic_dir(run.dir / "onnx") as tmp:
            quantize_onnx(source, tmp / "model.onnx")
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (source.parent / name).is_file():
                    shutil.copyfile(source.parent / name, tmp / name)
        written = run.dir / "onnx" / "model.onnx"
        after = measure_onnx(written, split, ec)
        details = {"library": "onnxruntime.quantization.quantize_dynamic (int8 weights, per channel)",
                   "data": str(meta.dir) if meta is not None else None}  # fmt: skip
        report = build_report("quantize", "onnx_dynamic_int8", str(source), str(written), before, after, details)
        write_report(run, report)
        run.add_output(run.dir / "onnx")
    return report


def measure_onnx(path: Path, split: TokenSplit | None, ec: CompressEvalConfig) -> dict[str, Any]:
    """The report's row for an ONNX graph, run by onnxruntime: bytes (graphs and weights), perplexity on the
    validation windows, greedy decode tokens/s through the KV-cache graph (median of ec.repeats)."""
    import numpy as np

    from lmforge.export.onnx import graph_bytes, with_past_name
    from lmforge.export.onnx_runner import OnnxLM
    from lmforge.train.data import eval_offsets

    lm = OnnxLM(path, threads=ec.threads)
    sibling = path.parent / with_past_name(path.name)
    size = graph_bytes(path) + (sibling.stat().st_size if sibling.is_file() else 0)  # one shared weights file
    stats: dict[str, Any] = {"bytes_on_disk": size, "parameters": None, "nonzero_parameters": None,
                             "val_loss": None, "perplexity": None, "decode_tokens_per_s": None}  # fmt: skip
    block = min(lm.block_size, 1024)
    if split is not None and ec.windows > 0:
        length = max(1, min(block, split.num_tokens - 1))
        offsets = eval_offsets(split, length, ec.windows)
        total = 0.0
        for i in range(0, len(offsets), ec.batch_size):
            rows = split.windows(offsets[i : i + ec.batch_size], length + 1).numpy()
            logits = lm.logits(rows[:, :-1]).astype(np.float64)
            top = logits.max(-1, keepdims=True)
            log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
            picked = np.take_along_axis(logits, rows[:, 1:, None], axis=-1)[..., 0]
            total += float((log_z - picked).mean()) * rows.shape[0]
        stats["val_loss"] = total / len(offsets)
        stats["perplexity"] = math.exp(min(stats["val_loss"], 700.0))
    if ec.gen_tokens > 0:
        prompt = timing_prompt(split, ec.prompt_tokens, block)
        new_tokens = max(1, min(ec.gen_tokens, block - len(prompt)))

        def decode() -> int:  # greedy, past EOS: the same work for both models
            return sum(1 for _ in lm._token_steps(prompt, new_tokens, 0.0, None, None, None))

        decode()
        speeds = []
        for _ in range(max(1, ec.repeats)):
            start = time.perf_counter()
            speeds.append(decode() / (time.perf_counter() - start))
        stats["decode_tokens_per_s"] = statistics.median(speeds)
    return stats
