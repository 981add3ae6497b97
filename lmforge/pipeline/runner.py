"""Run a pipeline: each stage through the CLI's own entry point, skipped when cached, resumed when interrupted.

    <out>/                 the pipeline's directory
      manifest.json        the pipeline: every stage's status, inputs (stage or path, with sha256), config,
                           command and outputs (with sha256); `artifacts` maps each output to its stage
      config.yaml          the resolved pipeline file;  logs/pipeline.log  everything every stage logged
      summary.md           the summary table
      configs/<stage>.yaml the config each stage ran with (rerun one by hand: its `command` in the manifest)
      state/<stage>.json   the cache key a stage was started with (an interrupted stage resumes if it matches)
      <stage>/             each stage's own run directory (its manifest.json carries `pipeline.cache_key`)

A stage runs as `lmforge.cli`'s parser and `cmd_*` function with the assembled arguments, in this process:
one code path with the CLI. A stage is skipped when its finished manifest holds the same cache key and its
files are unchanged (cache.py); `force` reruns from a named stage on. A training stage that was started
with the same key and did not finish continues from its last good checkpoint (`--resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import apply_override, to_dict
from lmforge.errors import LmforgeError
from lmforge.pipeline.cache import Hasher, cache_key, read_manifest, stale_reason
from lmforge.pipeline.spec import PipelineSpec, StageSpec
from lmforge.pipeline.stages import MODEL
from lmforge.runs import atomic_write_json, atomic_write_text, start_run

log = logging.getLogger("lmforge")


@dataclasses.dataclass
class StageResult:
    name: str
    kind: str
    status: str  # ran | resumed | cached
    seconds: float
    dir: Path
    record: dict[str, Any]


def run_cli(argv: list[str]) -> None:
    """Run one CLI verb in this process: its parser, its `cmd_*` function. Errors propagate as exceptions."""
    from lmforge.cli import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad argument list is our bug, but must not end the process silently
        raise LmforgeError(f"could not run `lmforge {' '.join(argv)}` (argument error {exc.code})") from None
    args.func(args)


def _stage_inputs(spec: PipelineSpec, stage: StageSpec, out: Path, hasher: Hasher) -> dict[str, dict[str, Any]]:
    """Each slot: the path(s) handed to the verb, where they came from, and their files with sha256."""
    inputs: dict[str, dict[str, Any]] = {}
    for slot, ref in stage.inputs.items():
        if ref.stage is not None:
            up = out / ref.stage
            manifest = read_manifest(up)
            if manifest.get("status") != "finished":
                raise LmforgeError(f"stage '{stage.name}': its input stage '{ref.stage}' has not finished")
            files = [{"path": o["path"], "sha256": o["sha256"]} for o in manifest.get("outputs", [])]
            hands = spec.stage(ref.stage).kind.hands
            handed = up / hands if hands else up
            if MODEL in stage.kind.slot(slot).accepts and (up / "adapter").is_dir():
                handed = up / "adapter"  # a LoRA fine-tune: its adapter, which names its base
            inputs[slot] = {"from": ref.stage, "paths": [str(handed.resolve())], "files": files}
        else:
            files = []
            for p in ref.paths:
                prefix = f"{p.name}/" if p.is_dir() else ""
                files += [{"path": prefix + f["path"], "sha256": f["sha256"]} for f in hasher.files(p)]
            inputs[slot] = {"from": None, "paths": [str(p) for p in ref.paths], "files": files}
    return inputs


def build_argv(stage: StageSpec, inputs: dict[str, dict[str, Any]], stage_dir: Path, config_file: Path,
               resume: bool) -> list[str]:  # fmt: skip
    kind = stage.kind
    argv = list(kind.verb)
    for slot in kind.slots:
        if slot.name not in inputs or slot.arg.startswith("cfg:"):
            continue
        paths = inputs[slot.name]["paths"]
        if slot.arg:
            argv += [slot.arg, paths[0]]
        else:
            argv += paths
    argv += ["--out", str(stage_dir), "--config", str(config_file)]
    if resume:
        argv.append("--resume")
    return argv


def _stage_config_text(stage: StageSpec, inputs: dict[str, dict[str, Any]]) -> str:
    """The stage's config as a file: slots handed over as config keys set, pipeline sections left out."""
    cfg = stage.config
    for slot in stage.kind.slots:
        if slot.name in inputs and slot.arg.startswith("cfg:"):
            cfg = apply_override(cfg, slot.arg.removeprefix("cfg:"), inputs[slot.name]["paths"][0])
    tree = to_dict(cfg)
    tree.pop("pipeline")
    tree.pop("sweep")
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def _read_state(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _mark_manifest(stage_dir: Path, block: dict[str, Any]) -> dict[str, Any]:
    """Add the pipeline's record (cache key, where the inputs came from) to the stage's own manifest."""
    manifest = read_manifest(stage_dir)
    if not manifest:
        raise LmforgeError(f"{stage_dir}: the stage finished without writing manifest.json")
    manifest["pipeline"] = block
    atomic_write_json(stage_dir / "manifest.json", manifest)
    return manifest


def run_stage(spec: PipelineSpec, stage: StageSpec, out: Path, hasher: Hasher, forced: bool) -> StageResult:
    n = len(spec.stages)
    label = f"[{stage.index + 1}/{n}] {stage.name}" + (f" ({stage.kind.kind})" if stage.name != stage.kind.kind else "")
    stage_dir = out / stage.name
    inputs = _stage_inputs(spec, stage, out, hasher)
    key = cache_key(stage.kind.kind, stage.config, stage.kind.sections,
                    {slot: v["files"] for slot, v in inputs.items()})  # fmt: skip
    reason = "forced" if forced else stale_reason(stage_dir, key, hasher)
    if reason is None:
        log.info("== %s: cached, skipped (key %s; --force %s reruns it)", label, key[:12], stage.name)
        return StageResult(stage.name, stage.kind.kind, "cached", 0.0, stage_dir, read_manifest(stage_dir))

    state_file = out / "state" / f"{stage.name}.json"
    state = _read_state(state_file)
    resume = (stage.kind.resumable and not forced and stage_dir.is_dir() and state.get("status") == "running"
              and state.get("cache_key") == key)  # fmt: skip
    if not resume and stage_dir.exists():
        shutil.rmtree(stage_dir)
    atomic_write_json(state_file, {"stage": stage.name, "cache_key": key, "status": "running",
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    config_file = out / "configs" / f"{stage.name}.yaml"
    atomic_write_text(config_file, _stage_config_text(stage, inputs))
    argv = build_argv(stage, inputs, stage_dir.resolve(), config_file.resolve(), resume)
    log.info("== %s: %s (%s)", label, "resuming from its last checkpoint" if resume else "running", reason)
    if not stage.kind.run:
        log.info("   lmforge %s", " ".join(argv))
    started = time.perf_counter()
    try:
        if stage.kind.run:
            module, function = stage.kind.run.split(":")
            run = getattr(importlib.import_module(module), function)
            run(stage.config, {slot: v["paths"] for slot, v in inputs.items()}, stage_dir, config_file)
        else:
            run_cli(argv)
    except LmforgeError as exc:
        raise type(exc)(f"stage '{stage.name}' ({stage.kind.kind}): {exc}") from None
    seconds = time.perf_counter() - started
    block = {
        "pipeline": str(out.resolve()),
        "stage": stage.name,
        "kind": stage.kind.kind,
        "cache_key": key,
        "config": str(config_file.resolve()),
        "command": ["lmforge", *argv],
        "inputs": inputs,
    }
    manifest = _mark_manifest(stage_dir, block)
    atomic_write_json(state_file, {"stage": stage.name, "cache_key": key, "status": "finished"})
    return StageResult(stage.name, stage.kind.kind, "resumed" if resume else "ran", seconds, stage_dir, manifest)


def _record(result: StageResult, out: Path) -> dict[str, Any]:
    m = result.record
    block = m.get("pipeline", {})
    config = Path(block["config"]) if block.get("config") else None
    return {
        "name": result.name,
        "kind": result.kind,
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "dir": result.name,
        "cache_key": block.get("cache_key"),
        "config": str(config.relative_to(out.resolve())) if config and config.is_relative_to(out.resolve()) else None,
        "config_sha256": m.get("config_sha256"),
        "command": block.get("command"),
        "inputs": {slot: {"from": v["from"], "paths": v["paths"], "files": v["files"]}
                   for slot, v in block.get("inputs", {}).items()},
        "outputs": [{"path": f"{result.name}/{o['path']}", "sha256": o["sha256"], "bytes": o.get("bytes")}
                    for o in m.get("outputs", [])],
    }


def run_pipeline(spec: PipelineSpec, force: str | None = None) -> list[StageResult]:
    """Run every stage of `spec` in order; returns each stage's result (and prints the summary)."""
    from lmforge.pipeline.summary import final_model, format_summary, sample_text

    force_index = spec.index(force) if force else None
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    hasher = Hasher()
    results: list[StageResult] = []
    started = time.perf_counter()
    with start_run("pipeline", spec.shared, out) as run:
        log.info("pipeline %s: %d stages -> %s", spec.name, len(spec.stages), out)
        for stage in spec.stages:
            forced = force_index is not None and stage.index >= force_index
            results.append(run_stage(spec, stage, out, hasher, forced))
            _update(run, spec, results, out, started)
        sample = None
        model_stage = final_model(spec, results)
        if spec.settings.sample_prompt and model_stage is not None:
            sample = sample_text(model_stage.dir, spec.settings.sample_prompt, spec.settings.sample_tokens,
                                 spec.shared.run.seed)  # fmt: skip
            run.extra["sample"] = {"model": model_stage.name, "prompt": spec.settings.sample_prompt, "text": sample}
        text = format_summary(spec, results, sample, model_stage.name if model_stage else None)
        atomic_write_text(out / "summary.md", text)
        run.add_output(out / "summary.md")
        _update(run, spec, results, out, started)
    print(text)
    return results


def _sources(record: dict[str, Any]) -> list[str]:
    """What a stage read: the names of its input stages, and raw paths."""
    found: list[str] = []
    for slot in record["inputs"].values():
        found += [slot["from"]] if slot["from"] else slot["paths"]
    return found


def _update(run: Any, spec: PipelineSpec, results: list[StageResult], out: Path, started: float) -> None:
    """The pipeline manifest so far: stages, their links, and every artifact's producer."""
    records = [_record(r, out) for r in results]
    raw: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        for slot in rec["inputs"].values():
            if slot["from"] is None:
                for p in slot["paths"]:
                    raw[p] = [f for f in slot["files"]]
    run.inputs = [{"path": p, "files": files} for p, files in raw.items()]
    run.outputs = [o for rec in records for o in rec["outputs"]]
    run.extra.update({
        "name": spec.name,
        "file": str(spec.file),
        "stages": records,
        "artifacts": {o["path"]: {"sha256": o["sha256"], "stage": rec["name"], "config": rec["config"],
                                  "from": _sources(rec)} for rec in records for o in rec["outputs"]},
        "pipeline_seconds": round(time.perf_counter() - started, 3),
    })  # fmt: skip
    run.write_manifest("running")


def plan_pipeline(spec: PipelineSpec, force: str | None = None) -> str:
    """What `run_pipeline` would do: each stage's inputs, and whether it is cached or would run (and why)."""
    force_index = spec.index(force) if force else None
    hasher = Hasher()
    will_run: set[str] = set()
    lines = [f"pipeline {spec.name} -> {spec.out}", "", "| # | stage | kind | inputs | would |", "| --- | --- | --- | --- | --- |"]
    for stage in spec.stages:
        sources = "; ".join(f"{slot}: {ref.describe()}" for slot, ref in stage.inputs.items()) or "-"
        upstream = {ref.stage for ref in stage.inputs.values() if ref.stage}
        if force_index is not None and stage.index >= force_index:
            would = "run (forced)"
        elif upstream & will_run:
            would = "run if " + ", ".join(sorted(upstream & will_run)) + " changes its outputs"
        else:
            inputs = _stage_inputs(spec, stage, spec.out, hasher)
            key = cache_key(stage.kind.kind, stage.config, stage.kind.sections,
                            {slot: v["files"] for slot, v in inputs.items()})  # fmt: skip
            reason = stale_reason(spec.out / stage.name, key, hasher)
            would = "skip (cached)" if reason is None else f"run ({reason})"
        if not would.startswith("skip"):
            will_run.add(stage.name)
        lines.append(f"| {stage.index + 1} | {stage.name} | {stage.kind.kind} | {sources} | {would} |")
    return "\n".join(lines)
