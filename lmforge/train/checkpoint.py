"""Checkpoints: `<run>/checkpoints/step-XXXXXXX/` directories written atomically.

Each holds `model.safetensors` (tied tensors stored once, re-tied on load), `model_config.json`,
`train_state.pt` (optimizer, schedule, RNG states, data position, step — plain types and tensors only,
loaded with `weights_only=True`), `info.json` (step, val loss, tokenizer sha256), a copy of the
shards' `tokenizer.json` when there is one, and `checksums.json` (sha256 of every other file). A recipe
may add files of its own (a classifier head, tokenizer_config.json); a LoRA fine-tune writes
`adapter.safetensors` + `adapter_config.json` in place of `model.safetensors`.

A checkpoint is assembled in a hidden temporary directory and renamed into place when complete; the
`latest` and `best` pointer files (a directory name) are replaced atomically. Loading verifies the
checksums and falls back to the newest good checkpoint, naming any bad one in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.runs import atomic_write_text, sha256_file

log = logging.getLogger("lmforge")

STEP_DIR = re.compile(r"^step-(\d{7,})$")
REQUIRED = ("model_config.json", "checksums.json")
WEIGHTS = ("model.safetensors", "adapter.safetensors")  # a checkpoint holds at least one of them


class CheckpointError(LmforgeError):
    """A checkpoint that cannot be used (missing, corrupt, or of another architecture)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def step_dirs(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories under `root`, newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------


def save_model_file(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors refuses shared storage: store each tied tensor once and record the aliases."""
    seen: dict[tuple[Any, ...], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    meta = {"format": "pt", "tied": json.dumps(tied, sort_keys=True), **(metadata or {})}
    save_file(tensors, str(path), metadata=meta)
    _sort_header(path)


def _sort_header(path: Path) -> None:
    """Rewrite the JSON header with sorted keys, in place and at the same length.

    safetensors serialises the metadata map in a per-process random order, so equal weights would give
    files with different sha256s, and content-addressed caching (the pipeline) would see a change.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) > size:  # cannot happen (same content, compact): leave the file as written
            return
        f.seek(8)
        f.write(canonical.ljust(size, b" "))


def load_model_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(path))
    for alias, source in json.loads(meta.get("tied", "{}")).items():
        state[alias] = state[source]
    return state


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor] | None,
    model_config: dict[str, Any],
    train_state: dict[str, Any],
    info: dict[str, Any],
    tokenizer_file: Path | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically and point `latest` at it.

    model_state None writes no model.safetensors (then `write_extra` must write adapter.safetensors);
    `write_extra(dir)` adds the recipe's own files before the checksums are taken."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if model_state is not None:
            save_model_file(model_state, tmp / "model.safetensors")
        (tmp / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
        torch.save(train_state, tmp / "train_state.pt")
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if tokenizer_file is not None and tokenizer_file.is_file():
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
            # The chat template and special tokens travel with the tokenizer they belong to.
            tokenizer_config = tokenizer_file.with_name("tokenizer_config.json")
            if tokenizer_config.is_file() and not (tmp / tokenizer_config.name).exists():
                shutil.copyfile(tokenizer_config, tmp / tokenizer_config.name)
        if write_extra is not None:
            write_extra(tmp)
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "checksums.json").write_text(json.dumps({"sha256": sums}, indent=2) + "\n", encoding="utf-8")
        _fsync_dir_files(tmp)
        if final.exists():  # a corrupt leftover of an interrupted run at the same step
            trash = root / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_pointer(root, "latest", final)
    return final


def _fsync_dir_files(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def write_pointer(root: Path, name: str, target: Path) -> None:
    atomic_write_text(root / name, target.name + "\n")


def read_pointer(root: Path, name: str) -> Path | None:
    pointer = root / name
    if not pointer.is_file():
        return None
    target = root / pointer.read_text(encoding="utf-8").strip()
    return target if target.is_dir() else None


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints plus the one `best` points to; drop temp leftovers."""
    keep = set(step_dirs(root)[: max(1, keep_last)])
    best = read_pointer(root, "best")
    if best is not None:
        keep.add(best)
    for d in step_dirs(root):
        if d not in keep:
            shutil.rmtree(d, ignore_errors=True)
    for leftover in root.glob(".tmp-step-*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def verify(ckpt: Path) -> str | None:
    """None if every file matches checksums.json, else what is wrong."""
    for name in REQUIRED:
        if not (ckpt / name).is_file():
            return f"{name} missing"
    if not any((ckpt / name).is_file() for name in WEIGHTS):
        return f"{WEIGHTS[0]} missing"
    try:
        sums = json.loads((ckpt / "checksums.json").read_text(encoding="utf-8"))["sha256"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError):
        return "checksums.json unreadable"
    for name, expected in sums.items():
        file = ckpt / name
        if not file.is_file():
            return f"{name} missing"
        if sha256_file(file) != expected:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def find_good_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under `root` that passes its checksums; bad ones are logged and skipped."""
    candidates = step_dirs(root)
    latest = read_pointer(root, "latest")
    if latest is not None and latest in candidates:
        candidates.remove(latest)
        candidates.insert(0, latest)
    for ckpt in candidates:
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log.warning("checkpoint %s is bad: %s; trying the previous one", ckpt, problem)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run / checkpoints directory (its newest good checkpoint)."""
    path = Path(path)
    if any((path / name).is_file() for name in WEIGHTS):
        problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is bad: {problem}")
        return path
    for root in (path / "checkpoints", path):
        if root.is_dir():
            found = find_good_checkpoint(root)
            if found is not None:
                return found
    raise CheckpointError(f"no usable checkpoint found at {path}")


def read_json(ckpt: Path, name: str) -> dict[str, Any]:
    file = ckpt / name
    if not file.is_file():
        return {}
    return json.loads(file.read_text(encoding="utf-8"))


def load_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_model_file(ckpt / "model.safetensors")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt}: cannot read model.safetensors ({exc})") from None


def load_train_state(ckpt: Path) -> dict[str, Any]:
    file = ckpt / "train_state.pt"
    if not file.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no train_state.pt, so it cannot be resumed")
    return torch.load(file, map_location="cpu", weights_only=True)


def check_shapes(ckpt: Path, state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint of another architecture with one line naming the first difference."""
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"checkpoint {ckpt} is of another architecture ({what})")
    for name, tensor in model_state.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {ckpt} is of another architecture: {name} has shape "
                f"{tuple(state[name].shape)}, the configured model has {tuple(tensor.shape)}"
            )


def write_best(root: Path, ckpt: Path) -> None:
    write_pointer(root, "best", ckpt)
