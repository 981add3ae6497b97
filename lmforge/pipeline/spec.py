"""A pipeline file, read and checked whole before anything runs.

The file is an ordinary lmforge config — its sections (run, data, tokenizer, model, train, ...) are shared
by every stage — plus a `pipeline:` section whose `stages` list the stages in the order they run:

    pipeline:
      stages:
        - stage: prepare                     # the kind (see lmforge/pipeline/stages.py)
          inputs: ../shared/data/x.txt       # stage names or paths; a mapping {slot: ...} for several
        - stage: tokenizer
          config: {tokenizer: {kind: char}}  # this stage's overrides: same keys as its own config and CLI
        - stage: finetune
          name: sft                          # needed when a kind appears twice
          inputs: {base: pretrain}
          config_file: configs/x.yaml        # optional: an ordinary config applied before `config:`

`${VAR}` and `${VAR:-default}` in the file are replaced by environment variables. Command-line overrides
are `section.key=value` (every stage) or `STAGE.section.key=value` (that stage only).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import (
    Config,
    PipelineConfig,
    SweepConfig,
    _build,
    _set_dotted,
    apply_override,
    parse_override,
    to_dict,
    unknown_key_error,
    valid_keys,
)
from lmforge.errors import ConfigError
from lmforge.pipeline.stages import FILES, RESERVED_NAMES, STAGES, StageKind, verb_available

STAGE_KEYS = ("stage", "name", "inputs", "config_file", "config")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class InputRef:
    """One slot's source: an earlier stage's run directory, or paths given in the file."""

    slot: str
    stage: str | None = None  # the producing stage's name
    paths: list[Path] = field(default_factory=list)  # raw paths (absolute), when no stage

    def describe(self) -> str:
        return f"stage '{self.stage}'" if self.stage else ", ".join(map(str, self.paths))


@dataclass
class StageSpec:
    name: str
    kind: StageKind
    index: int
    inputs: dict[str, InputRef]  # slot -> source
    config: Config  # shared sections + this stage's overrides (pipeline/sweep sections left at defaults)
    overrides: dict[str, Any]  # this stage's own dotted overrides, as written


@dataclass
class PipelineSpec:
    file: Path
    name: str
    out: Path
    shared: Config
    stages: list[StageSpec]
    settings: PipelineConfig

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def index(self, name: str) -> int:
        names = [s.name for s in self.stages]
        if name not in names:
            raise ConfigError(f"no stage named '{name}' in {self.file}{_suggest(name, names)} "
                              f"(stages: {', '.join(names)})")  # fmt: skip
        return names.index(name)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def expand_env(value: Any, where: str) -> Any:
    """`${VAR}` / `${VAR:-default}` in every string of a parsed YAML tree replaced by the environment (comments
    are left alone); an unset variable without a default is an error naming the key."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i + 1}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if found is None or (found == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise ConfigError(f"{where}: environment variable {m.group(1)} is not set "
                                  f"(write ${{{m.group(1)}:-default}} to give a default)")  # fmt: skip
            return m.group(2)
        return found

    return _ENV.sub(replace, value)


def read_tree(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: {getattr(exc, 'problem', None) or 'invalid YAML'}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a pipeline file must be a mapping of sections")
    try:
        return expand_env(tree, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys: {train: {optim: {lr: 1}}} -> {'train.optim.lr': 1}.

    A mapping stops being descended into where its dotted key is a config leaf (sweep.params)."""
    leaves = set(valid_keys())
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        sub_sections = any(k.startswith(dotted + ".") for k in leaves)
        if isinstance(value, dict) and value and sub_sections:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def split_overrides(tokens: list[str], stage_names: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Command-line `key=value` tokens into shared overrides and per-stage ones (`STAGE.section.key=value`)."""
    keys = set(valid_keys())
    shared: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for token in tokens:
        key, _ = parse_override(token)
        head, _, rest = key.partition(".")
        if head in stage_names and rest in keys and key not in keys:
            per_stage.setdefault(head, []).append(token.partition(".")[2])
        elif key in keys:
            shared.append(token)
        elif head in stage_names and head not in keys:
            raise unknown_key_error(rest, f"override '{token}': stage '{head}': ")
        elif head not in keys and "." in rest:
            raise ConfigError(f"override '{token}': no stage named '{head}'{_suggest(head, sorted(stage_names))} "
                              f"and no config section '{head}'")  # fmt: skip
        else:
            raise unknown_key_error(key, "override: ")
    return shared, per_stage


def _stage_config(shared: Config, overrides: dict[str, Any], where: str) -> Config:
    # The pipeline's own settings stay out of a stage's config, but for those of pipeline-run stages (pair).
    cfg = dataclasses.replace(shared, pipeline=PipelineConfig(pair=shared.pipeline.pair), sweep=SweepConfig())
    keys = set(valid_keys())
    tree = to_dict(cfg)
    for key, value in overrides.items():
        if key not in keys:
            raise unknown_key_error(key, where)
        _set_dotted(tree, key, value)
    return _build(Config, tree, "", where)  # one validation for all of them, errors naming the key


def _as_list(value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where}: expected a stage name, a path, or a list of them; got {value!r}")
    return items


def load_pipeline(path: str | Path, overrides: Sequence[str] = (), out: str | None = None) -> PipelineSpec:
    """Read, expand and check a pipeline file; every stage's inputs and config resolved."""
    path = Path(path)
    tree = read_tree(path)
    base_file = (tree.get("pipeline") or {}).get("config_file") if isinstance(tree.get("pipeline"), dict) else None
    if base_file:
        base = _config_file_overrides(base_file, path, f"{path}: pipeline.config_file: ")
        tree = _deep_merge(_unflatten(base), tree)
    shared = _build(Config, tree, "", f"{path}: ")
    raw_stages = shared.pipeline.stages
    if not raw_stages:
        raise ConfigError(f"{path}: no stages (list them under pipeline.stages)")

    # Names and kinds first: the overrides and the inputs refer to them.
    names: list[str] = []
    kinds: list[StageKind] = []
    for i, entry in enumerate(raw_stages, 1):
        where = f"{path}: pipeline.stages[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with 'stage:' (and name, inputs, config), got {entry!r}")
        for key in entry:
            if key not in STAGE_KEYS:
                raise ConfigError(f"{where}: unknown key '{key}'{_suggest(str(key), list(STAGE_KEYS))} "
                                  f"(a stage has {', '.join(STAGE_KEYS)})")  # fmt: skip
        kind_name = entry.get("stage")
        if not isinstance(kind_name, str) or not kind_name:
            raise ConfigError(f"{where}: 'stage:' names the kind ({', '.join(STAGES)})")
        if kind_name not in STAGES:
            raise ConfigError(f"{where}: unknown stage kind '{kind_name}'{_suggest(kind_name, list(STAGES))} "
                              f"(kinds: {', '.join(STAGES)})")  # fmt: skip
        kind = STAGES[kind_name]
        if not verb_available(kind):
            raise ConfigError(f"{where}: stage kind '{kind_name}' needs `lmforge {' '.join(kind.verb) or kind_name}`, "
                              "which this lmforge does not have")  # fmt: skip
        name = entry.get("name", kind_name)
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(f"{where}: bad stage name {name!r} (letters, digits, '_', '-', '.'; not "
                              f"{', '.join(sorted(RESERVED_NAMES))})")  # fmt: skip
        if name in names:
            first = names.index(name) + 1
            detail = (f"stage kind '{kind_name}' appears twice (stages {first} and {i}); give each a distinct "
                      f"'name:'" if "name" not in entry else f"stage name '{name}' is used twice (stages {first} and {i})")  # fmt: skip
            raise ConfigError(f"{path}: {detail}")
        names.append(name)
        kinds.append(kind)

    shared_overrides, per_stage = split_overrides(list(overrides), set(names))
    for token in shared_overrides:
        key, value = parse_override(token)
        shared = apply_override(shared, key, value)

    stages: list[StageSpec] = []
    for i, (entry, name, kind) in enumerate(zip(raw_stages, names, kinds)):
        where = f"{path}: stage '{name}': "
        section = entry.get("config") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}'config:' must be a mapping of config sections, got {section!r}")
        stage_overrides = _config_file_overrides(entry.get("config_file"), path, where)
        stage_overrides.update(flatten(section))
        for token in per_stage.get(name, []):
            key, value = parse_override(token)
            stage_overrides[key] = value
        cfg = _stage_config(shared, stage_overrides, where)
        inputs = _resolve_inputs(entry.get("inputs"), kind, cfg, names[:i], kinds[:i], names, where)
        stages.append(StageSpec(name, kind, i, inputs, cfg, stage_overrides))

    pname = shared.pipeline.name or path.name.removesuffix(".yaml").removesuffix(".yml")
    out_dir = Path(out or shared.pipeline.out or Path(shared.run.runs_dir) / pname)
    return PipelineSpec(path, pname, out_dir, shared, stages, shared.pipeline)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _config_file_overrides(value: Any, pipeline_file: Path, where: str) -> dict[str, Any]:
    """A stage's `config_file:` (an ordinary config, e.g. configs/sst2-scratch-classify.yaml) as overrides
    applied before its own `config:`; found relative to the working directory, else to the pipeline file."""
    if value is None:
        return {}
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}'config_file:' names a YAML config file, got {value!r}")
    found = next((p for p in (Path(value), pipeline_file.parent / value) if p.is_file()), None)
    if found is None:
        raise ConfigError(f"{where}config_file not found: {value}")
    flat = flatten(read_tree(found))
    return {k: v for k, v in flat.items() if k.split(".", 1)[0] not in ("pipeline", "sweep")}


def _resolve_inputs(
    raw: Any, kind: StageKind, cfg: Config, earlier: list[str], earlier_kinds: list[StageKind],
    all_names: list[str], where: str,
) -> dict[str, InputRef]:  # fmt: skip
    """Each slot's source: as named in `inputs:`, else a config key, else the nearest earlier producer."""
    named: dict[str, Any]
    if raw is None:
        named = {}
    elif isinstance(raw, dict):
        named = dict(raw)
        slot_names = [s.name for s in kind.slots]
        for slot in named:
            if kind.slot(str(slot)) is None:
                raise ConfigError(f"{where}unknown input '{slot}'{_suggest(str(slot), slot_names)} "
                                  f"(a {kind.kind} stage takes: {', '.join(slot_names)})")  # fmt: skip
    else:
        named = {kind.primary.name: raw}

    resolved: dict[str, InputRef] = {}
    for slot in kind.slots:
        ref = InputRef(slot.name)
        if slot.name in named:
            values = _as_list(named[slot.name], f"{where.rstrip(': ')}: input '{slot.name}'")
            if len(values) > 1 and not slot.many:
                raise ConfigError(f"{where}input '{slot.name}' takes one stage or path, got {len(values)}")
            for value in values:
                if value in earlier:
                    if ref.paths or ref.stage:
                        raise ConfigError(f"{where}input '{slot.name}' mixes a stage with other inputs")
                    ref.stage = value
                elif value in all_names:
                    raise ConfigError(f"{where}input '{slot.name}' names stage '{value}', which runs later; "
                                      "inputs come from earlier stages")  # fmt: skip
                else:
                    p = Path(value).expanduser()
                    if not p.exists():
                        raise ConfigError(
                            f"{where}input '{slot.name}': '{value}' is neither an earlier stage"
                            f"{_suggest(value, earlier)} nor an existing path"
                            f" (earlier stages: {', '.join(earlier) or 'none'})"
                        )
                    if ref.stage:
                        raise ConfigError(f"{where}input '{slot.name}' mixes a stage with other inputs")
                    ref.paths.append(p.resolve())
        elif slot.config_key and _config_value(cfg, slot.config_key):
            values = _config_value(cfg, slot.config_key)
            for value in values if isinstance(values, list) else [values]:
                p = Path(value).expanduser()
                if not p.exists():
                    raise ConfigError(f"{where}{slot.config_key}: no such file or directory: {value}")
                ref.paths.append(p.resolve())
        elif slot.nearest:
            producer = next((n for n, k in zip(reversed(earlier), reversed(earlier_kinds))
                             if set(k.makes) & set(slot.accepts)), None)  # fmt: skip
            ref.stage = producer
        if ref.stage is None and not ref.paths:
            if slot.required:
                what = " or ".join(a for a in slot.accepts)
                hint = f"{slot.config_key}: PATH or " if slot.config_key else ""
                raise ConfigError(f"{where}needs input '{slot.name}' ({what}): no earlier stage makes one; "
                                  f"set {hint}inputs: {{{slot.name}: STAGE_OR_PATH}}")  # fmt: skip
            continue
        if ref.paths and FILES not in slot.accepts and not slot.many and len(ref.paths) != 1:
            raise ConfigError(f"{where}input '{slot.name}' takes one path")
        resolved[slot.name] = ref
    return resolved


def _config_value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
