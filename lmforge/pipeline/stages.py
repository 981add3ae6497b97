"""The stage registry: what each kind of pipeline stage runs, takes and makes.

A stage kind is one `StageKind` entry in `STAGES`: the CLI verb it runs (the very `cmd_*` function a user
reaches by typing it), its input slots (what it accepts from earlier stages, and how each is handed to the
verb: a positional argument, an option, or a config key), the kind of artifact it makes, the config
sections its result depends on (the cache key covers those), whether it resumes from a checkpoint, and a
function that reads its run directory for the summary table. Adding a stage is adding an entry.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Artifact kinds that stages make and take.
FILES = "files"  # raw input files
RECORDS = "records"  # instruction records (jsonl)
DOCUMENTS = "documents"  # a prepared data directory (train/val/test.jsonl.zst)
TOKENIZER = "tokenizer"  # tokenizer.json + tokenizer_config.json
SHARDS = "shards"  # token shards (meta.json + *.bin)
MODEL = "model"  # a run or checkpoint directory that `load_model` reads
REPORT = "report"  # an evaluation report
EXPORTED = "exported"  # an exported model directory (Hugging Face, ONNX, ...)
CHECK = "check"  # a check's result (serve)


@dataclass(frozen=True)
class Slot:
    """One input of a stage."""

    name: str
    accepts: tuple[str, ...]  # artifact kinds an earlier stage may hand over
    arg: str = ""  # "": positional; "--flag": that option; "cfg:section.key": set in the stage's config
    required: bool = True
    many: bool = False  # several paths (prepare's raw files)
    nearest: bool = True  # unnamed: take the nearest earlier stage that makes an accepted kind
    config_key: str | None = None  # a config key that may name the input instead (finetune.data)


@dataclass(frozen=True)
class StageKind:
    kind: str
    verb: tuple[str, ...]  # the CLI words it runs (or, with `run`, needs)
    slots: tuple[Slot, ...]
    makes: tuple[str, ...]  # artifact kinds of its run directory
    sections: tuple[str, ...] | None  # config sections (or dotted keys) its result depends on; None: all
    description: str
    resumable: bool = False  # takes --resume and continues from its last good checkpoint
    summarize: Callable[[Path], dict[str, str]] | None = None
    # A stage the pipeline runs itself rather than through a CLI verb: "module:function" taking
    # (config, {slot: [paths]}, run directory, config file).
    run: str | None = None
    hands: str | None = None  # the file of its run directory that later stages get (default: the directory)

    @property
    def primary(self) -> Slot:
        return self.slots[0]

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.name == name), None)


# ---------------------------------------------------------------------------------------------------------
# Summaries: a few figures read from a finished run directory
# ---------------------------------------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def weights_bytes(run_dir: Path) -> int | None:
    """Size of the weights a run's manifest lists (the final checkpoint's or the exported files)."""
    outputs = _json(run_dir / "manifest.json").get("outputs", [])
    sizes = [o.get("bytes", 0) for o in outputs
             if str(o.get("path", "")).endswith((".safetensors", ".onnx", ".onnx.data", ".onnx_data", ".gguf"))]  # fmt: skip
    return sum(sizes) if sizes else None


def summarize_prepare(run_dir: Path) -> dict[str, str]:
    r = _json(run_dir / "report.json")
    if not r:
        return {}
    splits = ", ".join(f"{k} {_num(v.get('docs'))}" for k, v in r.get("splits", {}).items())
    return {
        "data": f"{_num(r.get('docs_out'))} docs kept of {_num(r.get('docs_in'))} read; "
                f"{_num(r.get('chars_out'))} of {_num(r.get('chars_in'))} chars ({splits})",
    }  # fmt: skip


def summarize_tokenizer(run_dir: Path) -> dict[str, str]:
    tok = _json(run_dir / "tokenizer.json")
    vocab = tok.get("model", {}).get("vocab")
    added = len(tok.get("added_tokens", []))
    size = len(vocab) if isinstance(vocab, dict | list) else None
    kind = tok.get("model", {}).get("type", "?")
    return {"tokenizer": f"{kind} vocab {_num(size)} ({added} special)"} if size else {}


def summarize_encode(run_dir: Path) -> dict[str, str]:
    meta = _json(run_dir / "meta.json")
    if not meta:
        return {}
    splits = ", ".join(f"{k} {_num(v.get('tokens'))}" for k, v in meta.get("splits", {}).items())
    return {"tokens": f"{_num(meta.get('tokens'))} tokens ({splits}), vocab {_num(meta.get('vocab_size'))}"}


def summarize_pretrain(run_dir: Path) -> dict[str, str]:
    s = _json(run_dir / "manifest.json").get("summary", {})
    if not s:
        return {}
    out = {
        "training": f"{_num(s.get('steps'))} steps, {_num(s.get('tokens'))} tokens, {_num(s.get('train_seconds'))} s",
        "loss": f"val loss {_num(s.get('val_loss'))} (ppl {_num(s.get('val_ppl'))}), best {_num(s.get('best_val_loss'))}",
    }  # fmt: skip
    size = weights_bytes(run_dir)
    out["model"] = f"{_num(s.get('parameters'))} params" + (f", {human_bytes(size)}" if size else "")
    return out


def summarize_finetune(run_dir: Path) -> dict[str, str]:
    r = _json(run_dir / "finetune_report.json")
    if not r:
        return {}
    figures = [f"{k} {_num(r[k])}" for k in ("val_loss", "accuracy", "macro_f1") if isinstance(r.get(k), float)]
    out = {
        "training": f"{r.get('task')} ({r.get('method')}), {_num(r.get('steps'))} steps",
        "loss": ", ".join(figures),
    }
    size = weights_bytes(run_dir)
    if size:
        out["model"] = f"{human_bytes(size)} of weights written"
    return out


def summarize_evaluate(run_dir: Path) -> dict[str, str]:
    from lmforge.eval.report import HEADLINE

    report = _json(run_dir / "report.json")
    shown = []
    for name, result in report.get("tasks", {}).items():
        metrics = result.get("metrics", {})
        keys = HEADLINE.get(result.get("kind", ""), list(metrics)[:3])
        figures = " ".join(f"{k} {_num(metrics[k])}" for k in keys if k in metrics)
        shown.append(f"{name} (n={result.get('n')}): {figures}")
    return {"metrics": "; ".join(shown)} if shown else {}


def summarize_model_dir(run_dir: Path) -> dict[str, str]:
    """A compressed or exported model: its format and size."""
    manifest = _json(run_dir / "manifest.json")
    size = weights_bytes(run_dir)
    facts = [f"{k} {v}" for k, v in (manifest.get(manifest.get("stage", ""), {}) or {}).items()
             if k in ("format", "dtype", "bits", "method", "sparsity", "parameters") and v is not None]  # fmt: skip
    if size:
        facts.append(human_bytes(size))
    return {"model": ", ".join(facts)} if facts else {}


def summarize_compress(run_dir: Path) -> dict[str, str]:
    """quantize / prune / distill: compress_report.json's before and after (teacher and student)."""
    r = _json(run_dir / "compress_report.json")
    before, after = r.get("before") or {}, r.get("after") or {}
    if not before or not after:
        return summarize_model_dir(run_dir)
    facts = [str(r.get("method") or r.get("stage"))]
    if before.get("bytes_on_disk") and after.get("bytes_on_disk"):
        facts.append(f"{human_bytes(before['bytes_on_disk'])} -> {human_bytes(after['bytes_on_disk'])}")
    if before.get("perplexity") and after.get("perplexity"):
        facts.append(f"ppl {_num(before['perplexity'])} -> {_num(after['perplexity'])}")
    if after.get("sparsity"):
        facts.append(f"sparsity {after['sparsity']:.1%}")
    if before.get("decode_tokens_per_s") and after.get("decode_tokens_per_s"):
        facts.append(f"decode {after['decode_tokens_per_s'] / before['decode_tokens_per_s']:.2f}x")
    return {"model": ", ".join(facts)}


def summarize_pair(run_dir: Path) -> dict[str, str]:
    pair = _json(run_dir / "manifest.json").get("pair") or {}
    return {"data": f"{_num(pair.get('records'))} records"} if pair else {}


def summarize_serve(run_dir: Path) -> dict[str, str]:
    r = _json(run_dir / "serve_check.json")
    if not r:
        return {}
    text = str(r.get("completion", "")).replace("\n", " ")
    return {"serve": f"HTTP {r.get('status')} in {_num(r.get('seconds'))} s: {text[:60]!r}"}


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------

_MODEL_INPUT = (Slot("model", (MODEL,)),)

STAGES: dict[str, StageKind] = {
    "pair": StageKind(
        "pair", (), (Slot("source", (FILES,), nearest=False), Slot("target", (FILES,), nearest=False)),
        (RECORDS,), ("run", "pipeline.pair"), "two line-aligned files as instruction records (jsonl)",
        summarize=summarize_pair, run="lmforge.pipeline.pair:pipeline_stage", hands="records.jsonl",
    ),
    "prepare": StageKind(
        "prepare", ("prepare",), (Slot("files", (FILES, RECORDS), many=True, nearest=False, config_key="data.inputs"),),
        (DOCUMENTS,), ("run", "data"), "clean, filter, deduplicate and split raw files",
        summarize=summarize_prepare,
    ),
    "tokenizer": StageKind(
        "tokenizer", ("tokenizer", "train"), (Slot("data", (DOCUMENTS,)),),
        (TOKENIZER,), ("run", "data", "tokenizer", "model.block_size"), "train a byte-level BPE or char tokenizer",
        summarize=summarize_tokenizer,
    ),
    "encode": StageKind(
        "encode", ("tokenizer", "encode"), (Slot("data", (DOCUMENTS,)), Slot("tokenizer", (TOKENIZER,), arg="--tokenizer")),
        (SHARDS,), ("run", "data", "tokenizer"), "encode prepared data into token shards",
        summarize=summarize_encode,
    ),
    "pretrain": StageKind(
        "pretrain", ("pretrain",), (Slot("shards", (SHARDS,)),
                                    Slot("init", (MODEL,), arg="cfg:train.init_from", required=False, nearest=False)),
        (MODEL,), ("run", "model", "train"), "train a GPT from token shards",
        resumable=True, summarize=summarize_pretrain,
    ),
    "finetune": StageKind(
        "finetune", ("finetune",), (Slot("data", (RECORDS, DOCUMENTS, FILES), config_key="finetune.data"),
                                    Slot("base", (MODEL,), arg="--base", config_key="finetune.base")),
        (MODEL,), ("run", "data", "tokenizer", "model", "train", "lora", "finetune", "generate"),
        "instruction-tune or train a classifier over a base model", resumable=True, summarize=summarize_finetune,
    ),
    "evaluate": StageKind(
        "evaluate", ("evaluate",), (Slot("model", (MODEL,)),
                                    # The `lm` task's text: a prepared data directory (eval.lm.split) or files.
                                    Slot("data", (DOCUMENTS, FILES), arg="cfg:eval.lm.files", required=False,
                                         nearest=False)),
        (REPORT,), ("run", "eval", "generate", "model"),
        "measure a model on benchmark tasks", summarize=summarize_evaluate,
    ),
    "export": StageKind(
        "export", ("export",), _MODEL_INPUT, (EXPORTED,), ("run", "export", "model", "generate"),
        "write the model as a Hugging Face directory (or another export.format)", summarize=summarize_model_dir,
    ),
    "serve": StageKind(
        "serve", ("serve",), (Slot("model", (MODEL, EXPORTED)),), (CHECK,), None,
        "start the server on a loopback port, send one completion, stop it", summarize=summarize_serve,
        run="lmforge.pipeline.serve_check:pipeline_stage",
    ),
}

# Compression: each reads a model (and optionally token shards for its perplexity / recovery training).
_SHARDS_OPTION = Slot("data", (SHARDS,), arg="--data", required=False, nearest=False)
STAGES.update({
    "quantize": StageKind(
        "quantize", ("quantize",), (Slot("model", (MODEL, EXPORTED)), _SHARDS_OPTION), (MODEL,), None,
        "int8 weights (torchao) or an int8 ONNX model, with a before/after report", summarize=summarize_compress,
    ),
    "prune": StageKind(
        "prune", ("prune",), (Slot("model", (MODEL,)), _SHARDS_OPTION), (MODEL,), None,
        "magnitude or structured pruning, then recovery training", resumable=True, summarize=summarize_compress,
    ),
    "distill": StageKind(
        "distill", ("distill",), (Slot("teacher", (MODEL,), arg="--teacher"),
                                  Slot("shards", (SHARDS,), required=False),
                                  Slot("student", (MODEL,), arg="--student", required=False, nearest=False)),
        (MODEL,), None, "train a smaller student on the teacher's logits", resumable=True,
        summarize=summarize_compress,
    ),
})  # fmt: skip

# Bookkeeping names inside a pipeline directory that a stage may not take.
RESERVED_NAMES = {"logs", "configs", "state", "manifest.json", "config.yaml", "summary.md"}


@functools.cache
def _cli_verbs() -> frozenset[tuple[str, ...]]:
    """Every verb path of the CLI: ('prepare',), ('tokenizer', 'train'), ..."""
    from lmforge.cli import build_parser

    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    found.add((*prefix, word))
                    walk(sub, (*prefix, word))

    walk(build_parser(), ())
    return frozenset(found)


def verb_available(kind: StageKind) -> bool:
    """Whether this lmforge's CLI has the stage's verb."""
    return not kind.verb or kind.verb in _cli_verbs()
