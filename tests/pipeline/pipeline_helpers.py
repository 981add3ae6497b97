"""Helpers for the pipeline tests: slices of the shared data, a tiny pipeline file, the CLI in-process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

# Small and fast everywhere: one layer, 32 wide, 32-token context, one thread.
SHARED_CONFIG: dict[str, Any] = {
    "run": {"seed": 7},
    "data": {"dedup": {"near": False}, "split": {"val": 0.1, "contiguous_min_chars": 1000}},
    "tokenizer": {"kind": "char"},
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
    # Long enough for test_pipeline_resume.py to kill the run between two checkpoints.
    "train": {"batch_size": 8, "max_steps": 150, "eval_every": 75, "eval_batches": 2, "save_every": 25,
              "log_every": 25, "sample_every_eval": False, "threads": 1, "device": "cpu",
              "schedule": {"warmup_steps": 2}},
}  # fmt: skip
PRETRAIN_STAGES = 4  # prepare, tokenizer, encode, pretrain: the first stages of every test pipeline


def write_sources(shared: Path, into: Path) -> dict[str, Path]:
    """A 40,000-character slice of tiny-shakespeare and 160 SST-2 rows: real data, small."""
    into.mkdir(parents=True, exist_ok=True)
    text = (shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:40_000]
    text_file = into / "shakespeare.txt"
    text_file.write_text(text, encoding="utf-8")
    rows = (shared / "sentiment" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[:161]
    sst2 = into / "sst2.tsv"
    sst2.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"text": text_file, "sst2": sst2}


def full_stages(sources: dict[str, Path]) -> list[dict[str, Any]]:
    classify = {"finetune": {"task": "classify", "text_field": "sentence", "label_field": "label",
                             "max_length": 32, "val_fraction": 0.2},
                "train": {"max_steps": 6, "eval_every": 3, "save_every": 3}}  # fmt: skip
    return [
        {"stage": "prepare", "inputs": str(sources["text"])},
        {"stage": "tokenizer"},
        {"stage": "encode"},
        {"stage": "pretrain"},
        # Two fine-tunes of one base: full and LoRA, each with its own name.
        {"stage": "finetune", "name": "classify-full", "inputs": {"data": str(sources["sst2"]), "base": "pretrain"},
         "config": classify},
        {"stage": "finetune", "name": "classify-lora", "inputs": {"data": str(sources["sst2"]), "base": "pretrain"},
         "config": {**classify, "finetune": {**classify["finetune"], "method": "lora"}}},
        {"stage": "evaluate", "inputs": {"model": "pretrain", "data": "prepare"},
         "config": {"eval": {"tasks": ["lm"], "limit": 1, "lm": {"split": "val"}}}},
        {"stage": "export"},
        {"stage": "quantize", "inputs": "pretrain", "config": {"compress": {"eval": {"windows": 8, "gen_tokens": 8, "repeats": 1}}}},
        {"stage": "serve"},
    ]  # fmt: skip


def write_pipeline(path: Path, sources: dict[str, Path], out: Path, stages: list[dict[str, Any]] | None = None,
                   **settings: Any) -> Path:  # fmt: skip
    """A pipeline file: the shared tiny config, the stages (default: every stage kind), its directory."""
    tree = {**SHARED_CONFIG, "pipeline": {"out": str(out), "sample_tokens": 16,
                                          "stages": stages if stages is not None else full_stages(sources),
                                          **settings}}  # fmt: skip
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`lmforge ARGV` in this process: (exit code, stdout, stderr)."""
    from lmforge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def lmforge_process(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmforge.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def stage_status(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in manifest(out)["stages"]}


def weights_digest(path: Path) -> str:
    """sha256 of the tensors (names, dtypes, shapes, bytes) of a safetensors file.

    Not of the file: safetensors writes its metadata map in a per-process order, so two files holding the
    same tensors may differ in their header bytes."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def final_weights(run_dir: Path) -> Path:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return run_dir / "checkpoints" / latest / "model.safetensors"
