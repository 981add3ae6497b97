"""Run directories, manifests and atomic writes, shared by every stage.

A run directory `runs/<name>/` holds the resolved `config.yaml`, `logs/<stage>.log`, the stage's outputs
and `manifest.json`: each input with its sha256, package versions, timings, and each output's sha256.
Every output is written under a temporary name and renamed when complete, so a killed run never leaves
a file that looks finished; the manifest is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from lmforge.config import Config, dump_yaml

log = logging.getLogger("lmforge")

_VERSIONED = ("lmforge", "torch", "numpy", "tokenizers", "safetensors", "transformers", "pyarrow")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def file_entry(path: str | Path, root: Path | None = None) -> dict[str, Any]:
    path = Path(path)
    shown = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    return {"path": shown, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def expand_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, or every file below a named directory (hidden ones skipped), sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.parts))
            )
        elif p.is_file():
            files.append(p)
    return files


@dataclass
class Run:
    """One stage's run directory. Use `start_run(...)` as a context manager."""

    stage: str
    dir: Path
    config: Config
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def path(self, name: str) -> Path:
        return self.dir / name

    def add_inputs(self, paths: Iterable[str | Path]) -> None:
        for f in expand_files(paths):
            self.inputs.append(file_entry(f))

    def add_output(self, path: str | Path) -> None:
        path = Path(path)
        for f in expand_files([path]) if path.is_dir() else [path]:
            self.outputs.append(file_entry(f, self.dir))

    def write_manifest(self, status: str) -> None:
        manifest = {
            "stage": self.stage,
            "status": status,
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 3),
            "versions": package_versions(),
            "config_sha256": hashlib.sha256(dump_yaml(self.config).encode()).hexdigest(),
            "inputs": self.inputs,
            "outputs": self.outputs,
            **self.extra,
        }
        atomic_write_json(self.dir / "manifest.json", manifest)


def default_run_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run.runs_dir) / (cfg.run.name or stage)


@contextlib.contextmanager
def start_run(stage: str, cfg: Config, out: str | Path | None = None) -> Iterator[Run]:
    """Create the run directory, save the resolved config, log to logs/<stage>.log, write the manifest.

    The manifest says `finished` only when the block completes; a failure leaves `failed`.
    """
    run_dir = Path(out) if out is not None else default_run_dir(cfg, stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    handler = logging.FileHandler(run_dir / "logs" / f"{stage}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    run = Run(stage=stage, dir=run_dir, config=cfg)
    stale = run_dir / "manifest.json"
    if stale.exists():
        stale.unlink()  # an old manifest must not vouch for outputs this run is about to replace
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            run.write_manifest("failed")
        raise
    else:
        run.write_manifest("finished")
    finally:
        log.removeHandler(handler)
        handler.close()


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time, not the one seen at set-up.

    Tools that swap `sys.stderr` (pytest's capture, notebooks, redirect_stderr) would
    otherwise leave the handler writing into a closed stream.
    """

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_console_logging(verbose: bool = False) -> None:
    """Plain messages on stderr; the run's log file gets timestamps."""
    if any(getattr(h, "_lmforge_console", False) for h in log.handlers):
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._lmforge_console = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
