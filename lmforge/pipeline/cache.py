"""Caching by content: a stage is skipped when its cache key and every file it read and wrote still match.

The cache key is the sha256 of the stage's kind, the config sections its result depends on, and the
sha256 of every input file (named by its path inside its slot, so moving a directory keeps the key).
A finished stage's manifest.json carries the key under `pipeline.cache_key`; the stage is still valid if
every input and output that manifest lists exists with the recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import Config, to_dict
from lmforge.runs import expand_files, sha256_file

# Files of a run directory that describe the run rather than carry its result.
BOOKKEEPING = {"manifest.json", "config.yaml"}


class Hasher:
    """sha256 of files, remembered per (path, size, mtime) so a pipeline reads each file once."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._memo:
            self._memo[key] = sha256_file(path)
        return self._memo[key]

    def files(self, root: Path) -> list[dict[str, Any]]:
        """Every file under `root` (or `root` itself), with its path relative to root and sha256."""
        entries = []
        for f in expand_files([root]):
            rel = f.name if f == root else str(f.relative_to(root))
            entries.append({"path": rel, "sha256": self.sha256(f)})
        return entries


def config_for_key(cfg: Config, sections: tuple[str, ...] | None) -> dict[str, Any]:
    """The part of the config a stage's result depends on: whole sections, or single dotted keys."""
    tree = to_dict(cfg)
    if sections is None:
        return {k: v for k, v in tree.items() if k not in ("pipeline", "sweep", "dashboard", "explain")}
    picked: dict[str, Any] = {}
    for name in sections:
        value: Any = tree
        for part in name.split("."):
            value = value[part]
        picked[name] = value
    return picked


def cache_key(kind: str, cfg: Config, sections: tuple[str, ...] | None,
              inputs: dict[str, list[dict[str, Any]]]) -> str:  # fmt: skip
    payload = {
        "kind": kind,
        "config": yaml.safe_dump(config_for_key(cfg, sections), sort_keys=True),
        "inputs": {slot: sorted((f["path"], f["sha256"]) for f in files) for slot, files in sorted(inputs.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stale_reason(run_dir: Path, key: str, hasher: Hasher) -> str | None:
    """None when `run_dir` is a finished run for `key` whose recorded files are unchanged; else why not."""
    manifest = read_manifest(run_dir)
    if not manifest:
        return "not run yet" if not run_dir.exists() else "no finished manifest"
    if manifest.get("status") != "finished":
        return f"last run {manifest.get('status', 'unfinished')}"
    recorded = manifest.get("pipeline", {}).get("cache_key")
    if recorded != key:
        return "config or inputs changed" if recorded else "not run by a pipeline"
    for entry in manifest.get("outputs", []):
        reason = _changed(run_dir / entry["path"], entry, hasher)
        if reason:
            return f"output {reason}"
    for entry in manifest.get("inputs", []):
        p = Path(entry["path"])
        if p.name in BOOKKEEPING or p.parent.name == "logs":
            continue  # an upstream run's own records, rewritten whenever it runs; its outputs are checked
        reason = _changed(p if p.is_absolute() else Path(os.getcwd()) / p, entry, hasher)
        if reason:
            return f"input {reason}"
    return None


def _changed(path: Path, entry: dict[str, Any], hasher: Hasher) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size != entry.get("bytes", path.stat().st_size) or hasher.sha256(path) != entry.get("sha256"):
        return f"{path} changed"
    return None
