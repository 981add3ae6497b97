"""The model card (README.md of every export) and the lineage walk it is written from.

`lineage_chain(path)` follows a model back to its raw data through the run directories' manifest.json:
checkpoint -> its training run -> the token shards it read -> the tokenizer and the prepared data they read
-> the raw files (and, for a fine-tune, its base model; for an adapter, its base; for an export, its
source). Each step is a node with the manifest's stage, command, time, config and output digests, and each
link says whether the sha256 recorded when the later stage read a file still matches the file on disk.
`lmforge lineage` and `lmforge pipeline` reuse it.

`model_card(...)` turns the chain into Markdown: the model's shape, its tokenizer, the data and what every
preparation step removed, the training configuration and results, evaluation results found beside the model
(or named by `export.eval_reports`), the format's own section (ONNX check, int8), and the lineage table.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmforge.errors import LmforgeError
from lmforge.runs import atomic_write_text, sha256_file

if TYPE_CHECKING:
    from lmforge.config import ExportConfig
    from lmforge.infer.load import LoadedModel

MANIFEST = "manifest.json"
HASH_LIMIT = 256 * 1024 * 1024  # files up to this size are hashed to check a link; larger ones are trusted
MAX_SOURCES = 50  # raw input files listed per run
MAX_NODES = 200  # a runaway walk stops here
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# ---------------------------------------------------------------------------------------------------------
# Reading run directories
# ---------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a plain dict ({} when missing or unreadable)."""
    with contextlib.suppress(OSError, yaml.YAMLError, UnicodeDecodeError):
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _is_checkpoint(path: Path) -> bool:
    return (path / "model_config.json").is_file() and not (path / MANIFEST).is_file()


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "model_config.json").is_file()


def _is_hf(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "model_config.json").is_file()


def _resolve_recorded(recorded: str, near: Path) -> Path | None:
    """A path as a manifest recorded it (relative to the cwd of that command, which is not recorded): as
    given, else relative to `near` (the recording run's directory) or one of its first ancestors."""
    p = Path(recorded)
    if p.is_absolute():
        return p if p.exists() else None
    candidates = [Path.cwd() / p, near / p, *(anc / p for anc in list(near.parents)[:4])]
    return next((c for c in candidates if c.exists()), None)


def _owner(file: Path) -> Path | None:
    """The directory that stands for `file` in the chain: the checkpoint or adapter holding it, else the
    nearest run directory (with a manifest.json) at most three levels up; None for a raw input."""
    d = file if file.is_dir() else file.parent
    if _is_checkpoint(d) or _is_adapter(d):
        return d
    for candidate in [d, *list(d.parents)[:3]]:
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def _recorded_sha_matches(file: Path, sha: str | None, owner: Path | None) -> bool | None:
    """Whether `file` still has the sha256 recorded when a later step read it: False when the run that wrote
    it recorded another digest (it was re-run since) or when the file now hashes differently; files over
    HASH_LIMIT are not re-hashed (the writer's record is trusted). None: nothing to compare with."""
    if not sha:
        return None
    listed: str | None = None
    if owner is not None:
        rel = os.path.relpath(file.resolve(), owner.resolve())
        for entry in _read_json(owner / MANIFEST).get("outputs", []):
            if isinstance(entry, dict) and entry.get("path") == rel:
                listed = entry.get("sha256")
        sums = _read_json(owner / "checksums.json").get("sha256", {})
        if listed is None and isinstance(sums, dict):
            listed = sums.get(rel)
        if listed is not None and listed != sha:
            return False
    if file.is_file() and file.stat().st_size <= HASH_LIMIT:
        return sha256_file(file) == sha
    return True if listed is not None else None


def _weights_digest(path: Path) -> dict[str, str] | None:
    """The model's weights file and its sha256 (from checksums.json when there is one)."""
    sums = _read_json(path / "checksums.json").get("sha256", {})
    for name in ("model.safetensors", "adapter.safetensors", "model.onnx.data", "model.onnx"):
        if (path / name).is_file():
            sha = sums.get(name) if isinstance(sums, dict) else None
            if not sha and (path / name).stat().st_size <= HASH_LIMIT * 8:
                sha = sha256_file(path / name)
            return {"file": name, "sha256": sha} if sha else {"file": name}
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return {"file": shards[0].name, "sha256": sha256_file(shards[0])}
    return None


# ---------------------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------------------


class _Walk:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.ids: dict[str, int] = {}
        self.queue: list[tuple[int, Path]] = []

    def visit(self, path: Path, kind: str | None = None) -> int:
        """The node id of `path`, creating it (and queueing its parents) when first seen."""
        key = str(path.resolve())
        if key in self.ids:
            return self.ids[key]
        node: dict[str, Any] = {"id": len(self.nodes), "kind": kind or _kind(path), "path": key, "parents": [],
                                "links": []}  # fmt: skip
        self.ids[key] = node["id"]
        self.nodes.append(node)
        self.queue.append((node["id"], path))
        return node["id"]

    def run(self) -> list[dict[str, Any]]:
        while self.queue and len(self.nodes) < MAX_NODES:
            node_id, path = self.queue.pop(0)
            self._expand(self.nodes[node_id], path)
        return self.nodes

    def _link(self, node: dict[str, Any], parent: Path, how: str, recorded: str, ok: bool | None) -> None:
        pid = self.visit(parent)
        if pid not in node["parents"]:
            node["parents"].append(pid)
        node["links"].append({"parent": pid, "via": how, "recorded": recorded, "unchanged": ok})

    def _expand(self, node: dict[str, Any], path: Path) -> None:
        kind = node["kind"]
        if kind == "missing":
            return
        if kind in ("checkpoint", "adapter", "hf_model", "run") and path.is_dir():
            weights = _weights_digest(path)
            if weights:
                node["weights"] = weights
        if kind == "checkpoint":
            info = _read_json(path / "info.json")
            node["details"] = {k: info[k] for k in ("stage", "step", "tokens_seen", "val_loss", "best_val_loss")
                               if k in info}  # fmt: skip
            run_dir = path.parent.parent
            if path.parent.name == "checkpoints" and (run_dir / MANIFEST).is_file():
                self._link(node, run_dir, "checkpoint of", str(run_dir), None)
        elif kind == "adapter":
            config = _read_json(path / "adapter_config.json")
            base = config.get("base_model", {}) if isinstance(config.get("base_model"), dict) else {}
            if base.get("path"):
                found = _resolve_recorded(str(base["path"]), path)
                if found is None:
                    self._missing(node, str(base["path"]), base.get("sha256"), "base model")
                else:
                    ok = None
                    digest = _weights_digest(found)
                    if digest and digest.get("sha256") and base.get("sha256"):
                        ok = digest["sha256"] == base["sha256"]
                    self._link(node, found, "base model", str(base["path"]), ok)
            run_dir = _owner(path.parent) if path.parent != path else None
            if run_dir is not None and run_dir != path:
                self._link(node, run_dir, "adapter of", str(run_dir), None)
        elif kind == "run":
            self._expand_run(node, path)

    def _missing(self, node: dict[str, Any], recorded: str, sha: str | None, how: str) -> None:
        key = f"missing:{recorded}"
        if key not in self.ids:
            self.ids[key] = len(self.nodes)
            self.nodes.append({"id": len(self.nodes), "kind": "missing", "path": recorded, "sha256": sha,
                               "parents": [], "links": []})  # fmt: skip
        node["parents"].append(self.ids[key])
        node["links"].append({"parent": self.ids[key], "via": how, "recorded": recorded, "unchanged": None})

    def _expand_run(self, node: dict[str, Any], run_dir: Path) -> None:
        manifest = _read_json(run_dir / MANIFEST)
        node["stage"] = manifest.get("stage")
        for key in ("status", "started", "seconds", "command", "config_sha256"):
            if key in manifest:
                node[key] = manifest[key]
        node["manifest_sha256"] = sha256_file(run_dir / MANIFEST)
        stage = manifest.get("stage")
        details = manifest.get(stage) if isinstance(stage, str) else None
        if not isinstance(details, dict):
            details = manifest.get("summary")
        if isinstance(details, dict):
            node["details"] = details
        node["outputs"] = len(manifest.get("outputs", []))
        sources: list[dict[str, Any]] = []
        by_parent: dict[Path, list[bool | None]] = {}
        for entry in manifest.get("inputs", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            recorded, sha = entry["path"], entry.get("sha256")
            found = _resolve_recorded(recorded, run_dir)
            if found is None:
                if _looks_like_run_file(recorded):
                    self._missing(node, str(Path(recorded).parent), None, "input")
                else:
                    sources.append({"path": recorded, "sha256": sha, "bytes": entry.get("bytes"), "found": False})
                continue
            owner = _owner(found)
            if owner is None or owner.resolve() == run_dir.resolve():
                sources.append({"path": str(found.resolve()), "sha256": sha, "bytes": entry.get("bytes"),
                                "found": True, "unchanged": _recorded_sha_matches(found, sha, None)})  # fmt: skip
                continue
            by_parent.setdefault(owner, []).append(_recorded_sha_matches(found, sha, owner))
        for owner, checks in by_parent.items():
            ok = None if all(c is None for c in checks) else all(c is not False for c in checks)
            self._link(node, owner, "input", str(owner), ok)
        # Models a run started from, named in its config rather than its inputs.
        config = read_run_config(run_dir)
        refs = []
        if stage == "finetune":
            refs.append(("base model", (config.get("finetune") or {}).get("base")))
        if stage in ("pretrain", "finetune"):
            refs.append(("initialised from", (config.get("train") or {}).get("init_from")))
        for how, ref in refs:
            if isinstance(ref, str) and ref:
                found = _resolve_recorded(ref, run_dir)
                if found is None:
                    self._missing(node, ref, None, how)
                elif str(found.resolve()) not in {self.nodes[p]["path"] for p in node["parents"]}:
                    self._link(node, _model_root(found), how, ref, None)
        if sources:
            node["sources"] = sources[:MAX_SOURCES]
            if len(sources) > MAX_SOURCES:
                node["sources_total"] = len(sources)


def _looks_like_run_file(recorded: str) -> bool:
    return Path(recorded).name in (MANIFEST, "meta.json", "config.yaml", "tokenizer.json")


def _model_root(path: Path) -> Path:
    """A run directory named as a model stands for itself (it has the manifest); a file for its directory."""
    return path if path.is_dir() else path.parent


def _kind(path: Path) -> str:
    if not path.exists():
        return "missing"
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "run"
        if _is_adapter(path):
            return "adapter"
        if _is_checkpoint(path):
            return "checkpoint"
        if _is_hf(path):
            return "hf_model"
        return "directory"
    return "file"


def lineage_chain(path: str | Path) -> list[dict[str, Any]]:
    """Every step that made the model (or any run directory) at `path`, newest first: a list of nodes.

    Each node: `id` (its index), `kind` (run, checkpoint, adapter, hf_model, file, directory, missing),
    `path` (resolved), `parents` (ids of the nodes it was made from) and `links` (per parent: `via` - input,
    checkpoint of, base model, ...; `recorded` - the path as recorded; `unchanged` - True/False when the
    recorded sha256 was compared with the file now, None when it could not be). Run nodes add `stage`,
    `status`, `started`, `seconds`, `command`, `config_sha256`, `manifest_sha256`, `details` (the stage's
    summary from its manifest), `outputs` (count) and `sources` (raw input files: path, sha256, bytes).
    Model nodes add `weights` ({file, sha256}); checkpoints add `details` (step, val_loss, ...).
    """
    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such model or run directory: {path}")
    walk = _Walk()
    walk.visit(path)
    return walk.run()


# ---------------------------------------------------------------------------------------------------------
# Evaluation reports
# ---------------------------------------------------------------------------------------------------------


def _report_file(path: Path) -> Path:
    return path / "report.json" if path.is_dir() else path


def load_eval_report(path: str | Path) -> dict[str, Any]:
    """An `lmforge evaluate` report.json (or its run directory); a one-line error when it is not one."""
    file = _report_file(Path(path))
    if not file.is_file():
        raise LmforgeError(f"export.eval_reports: no evaluation report at {file}")
    report = _read_json(file)
    if not isinstance(report.get("tasks"), dict):
        raise LmforgeError(f"export.eval_reports: {file} is not an evaluation report (no 'tasks')")
    report["_path"] = str(file.resolve())
    return report


def find_eval_reports(model_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Evaluation reports of the model: report.json files of `evaluate` runs inside the model's run
    directory or beside it (in the same runs/ folder) whose model path is one of `model_dirs`."""
    targets = {str(Path(d).resolve()) for d in model_dirs}
    places: list[Path] = []
    for d in model_dirs:
        d = Path(d)
        run_dir = d.parent.parent if d.parent.name == "checkpoints" else d
        for root in (run_dir, run_dir.parent):
            if root.is_dir():
                places += sorted(p for p in root.iterdir() if p.is_dir())[:500]
    found: dict[str, dict[str, Any]] = {}
    for place in places:
        file = place / "report.json"
        if str(file) in found or not file.is_file():
            continue
        if _read_json(place / MANIFEST).get("stage") != "evaluate":
            continue
        report = _read_json(file)
        model = report.get("model", {}).get("path") if isinstance(report.get("model"), dict) else None
        if not isinstance(model, str):
            continue
        resolved = _resolve_recorded(model, place)
        if resolved is not None and str(resolved.resolve()) in targets:
            report["_path"] = str(file.resolve())
            found[str(file)] = report
    return list(found.values())


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif value is None:
        text = "–"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _short(sha: str | None) -> str:
    return f"`{sha[:12]}`" if sha else "–"


def _settings(section: Any, skip: Iterable[str] = ()) -> str:
    """A config section as `key=value` pairs (nested sections dotted; nulls left out)."""
    pairs: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in skip:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is not None and value != []:
            pairs.append(f"{prefix}={json.dumps(value, ensure_ascii=False) if isinstance(value, str) else value}")

    walk("", section)
    return ", ".join(pairs)


def title_for(source: Path) -> str:
    """`run/step-0001000` for a checkpoint of a run, else the directory's name."""
    source = Path(source).resolve()
    if source.name.startswith("step-") and source.parent.name == "checkpoints":
        return f"{source.parent.parent.name}/{source.name}"
    return source.name or "model"


USAGE = {
    "hf": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")
model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")
ids = tokenizer("Hello", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=False)[0]))
```""",
    "onnx": """```python
from lmforge.export.onnx_runner import OnnxLM   # onnxruntime + tokenizers + numpy, no PyTorch

lm = OnnxLM("path/to/this/dir")                  # or path/to/this/dir/model.int8.onnx
print(lm.generate("Hello", max_new_tokens=50, temperature=0))
```
```bash
lmforge generate path/to/this/dir --prompt "Hello" generate.temperature=0
```
Plain onnxruntime: `model.onnx` takes `input_ids` and `attention_mask` (int64, batch × seq) and returns
`logits`; `model_with_past.onnx` also takes `past_key.{i}` / `past_value.{i}` and returns `present_*`.""",
    "safetensors": """```bash
lmforge generate path/to/this/dir --prompt "Hello"
lmforge finetune data.jsonl --base path/to/this/dir      # or train.init_from=path/to/this/dir
```
```python
from lmforge.infer.load import load_model
loaded = load_model("path/to/this/dir")   # .model (lmforge GPT), .tokenizer
```""",
}
LIBRARY = {"hf": "transformers", "onnx": "onnx"}
FORMAT_TEXT = {
    "hf": "a Hugging Face transformers directory",
    "onnx": "ONNX graphs for onnxruntime (plain and with a KV cache)",
    "safetensors": "an lmforge checkpoint (safetensors, no training state)",
}


def model_card(loaded: LoadedModel, fmt: str, out_dir: Path, eval_reports: list[str] | None = None,
               dtype: str = "fp32") -> str:  # fmt: skip
    """The README.md text for the export of `loaded` in format `fmt` written into `out_dir`."""
    chain = lineage_chain(loaded.source)
    reports = [load_eval_report(p) for p in eval_reports or []]
    model_dirs = [Path(loaded.source)]
    if chain and chain[0]["kind"] == "checkpoint" and chain[0]["parents"]:
        model_dirs.append(Path(chain[chain[0]["parents"][0]]["path"]))
    seen = {r["_path"] for r in reports}
    reports += [r for r in find_eval_reports(model_dirs) if r["_path"] not in seen]

    lines = ["---"]
    if fmt in LIBRARY:
        lines.append(f"library_name: {LIBRARY[fmt]}")
    lines += ["pipeline_tag: text-generation", "tags:", "- lmforge", f"- {fmt}", "---", ""]
    lines += [f"# {title_for(loaded.source)}", ""]
    lines += [f"A decoder-only language model made with lmforge, exported as {FORMAT_TEXT.get(fmt, fmt)}.", ""]
    lines += ["## Usage", "", USAGE.get(fmt, f"`lmforge export --format {fmt}` output."), ""]
    lines += _model_section(loaded, fmt, out_dir, dtype)
    lines += _tokenizer_section(loaded, chain)
    lines += _data_section(chain)
    lines += _training_section(chain)
    lines += _eval_section(reports)
    if fmt == "onnx":
        lines += _onnx_section(out_dir)
    lines += _lineage_section(chain)
    return "\n".join(lines).rstrip() + "\n"


def _model_section(loaded: LoadedModel, fmt: str, out_dir: Path, dtype: str) -> list[str]:
    model, cfg = loaded.model, loaded.model.config
    heads = f"{cfg.n_head}" + (f" ({cfg.n_kv_head} key/value heads)" if cfg.n_kv_head != cfg.n_head else "")
    parts = "RoPE, RMSNorm, SwiGLU" if cfg.flavour == "llama" else "learned positions, LayerNorm, GELU"
    rows: list[list[Any]] = [["Flavour", f"{cfg.flavour} ({parts})"]]
    hf_config = _read_json(out_dir / "config.json") if fmt == "hf" else {}
    if hf_config.get("architectures"):
        rows.append(["Architecture", f"`{hf_config['architectures'][0]}`"])
    rows += [
        ["Parameters", f"{model.num_params():,} ({model.num_params() * DTYPE_BYTES.get(dtype, 4) / 1e6:.1f} MB in {dtype})"],
        ["Layers", cfg.n_layer],
        ["Hidden size", cfg.n_embd],
        ["Attention heads", heads],
        ["MLP size", cfg.intermediate_size],
        ["Context (block size)", cfg.block_size],
        ["Vocabulary", cfg.vocab_size],
        ["Tied embeddings", cfg.tie_embeddings],
    ]
    source = f"`{loaded.source}` ({loaded.kind})"
    if loaded.adapter is not None:
        base = loaded.adapter["base_model"]
        source += f"; LoRA rank {loaded.adapter.get('rank', '?')} merged into base `{base['path']}`"
    rows.append(["Source", source])
    return ["## Model", "", *_table(["", ""], rows), ""]


def _tokenizer_section(loaded: LoadedModel, chain: list[dict[str, Any]]) -> list[str]:
    lines = ["## Tokenizer", ""]
    if loaded.tokenizer is None:
        return [*lines, "No tokenizer was found beside the model; none is exported.", ""]
    tc = loaded.tokenizer_config
    vocab = loaded.tokenizer.get_vocab_size(with_added_tokens=True)
    special = [tc[k] if isinstance(tc.get(k), str) else (tc.get(k) or {}).get("content") for k in
               ("bos_token", "eos_token", "pad_token", "unk_token")]  # fmt: skip
    rows: list[list[Any]] = [["Kind", tc.get("lmforge_kind", "fast (tokenizers)")], ["Vocabulary", vocab],
                             ["Special tokens", ", ".join(f"`{s}`" for s in special if s) or "–"],
                             ["Chat template", "yes" if tc.get("chat_template") else "no"]]  # fmt: skip
    trained = [n for n in chain if n.get("stage") == "tokenizer"]
    for node in trained[:1]:
        details = node.get("details", {})
        rows.append(["Trained by", f"`lmforge tokenizer train` in `{node['path']}`"])
        if details:
            rows.append(["Training", _settings(details)])
        settings = read_run_config(Path(node["path"])).get("tokenizer")
        if settings:
            rows.append(["Settings", _settings(settings)])
    return [*lines, *_table(["", ""], rows), ""]


def _data_section(chain: list[dict[str, Any]]) -> list[str]:
    prepared = [n for n in chain if n.get("stage") == "prepare"]
    lines = ["## Data", ""]
    if not prepared:
        raw = [s for n in chain for s in n.get("sources", []) if n.get("stage") in ("finetune", "pretrain")]
        if not raw:
            return [*lines, "No `lmforge prepare` run was found in this model's lineage.", ""]
        lines += ["Read directly (no `lmforge prepare` run in the lineage):", ""]
        lines += _table(["file", "bytes", "sha256"], [[f"`{s['path']}`", s.get("bytes"), _short(s.get("sha256"))]
                                                      for s in raw])  # fmt: skip
        return [*lines, ""]
    for node in prepared:
        run_dir = Path(node["path"])
        report = _read_json(run_dir / "report.json")
        lines += [f"Prepared by `lmforge prepare` in `{run_dir}`.", ""]
        sources = node.get("sources", [])
        if sources:
            lines += _table(["source file", "bytes", "sha256"],
                            [[f"`{s['path']}`", s.get("bytes"), _short(s.get("sha256"))] for s in sources])  # fmt: skip
            if node.get("sources_total"):
                lines.append(f"… {node['sources_total']} files in all.")
            lines.append("")
        if report:
            lines += [f"{report.get('docs_in', '?'):,} documents ({report.get('chars_in', 0):,} characters) in, "
                      f"{report.get('docs_out', '?'):,} ({report.get('chars_out', 0):,} characters) out.", ""]  # fmt: skip
            steps = [s for s in report.get("steps", []) if isinstance(s, dict)]
            if steps:
                rows = []
                for s in steps:
                    why = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                    for k, v in (s.get("removed_by") or {}).items())  # fmt: skip
                    rows.append([s.get("name"), s.get("docs_in"), s.get("docs_out"), s.get("removed"), why or "–"])
                lines += ["What each step removed:", ""]
                lines += _table(["step", "docs in", "docs out", "removed", "removed by rule"], rows)
                lines.append("")
            skipped = report.get("skipped") or {}
            if skipped:
                lines += [f"Bad records skipped: {_settings(skipped)}.", ""]
        data_cfg = read_run_config(run_dir).get("data") or {}
        filters = [(name, data_cfg.get(name)) for name in ("normalize", "language", "quality", "pii", "dedup", "split")]
        rows = [[name, _settings(section, skip=("enabled",)) if section.get("enabled", True) else "off"]
                for name, section in filters if isinstance(section, dict)]  # fmt: skip
        if rows:
            lines += ["Filters and settings:", "", *_table(["step", "settings"], rows), ""]
    return lines


def _training_section(chain: list[dict[str, Any]]) -> list[str]:
    runs = [n for n in chain if n.get("stage") in ("pretrain", "finetune")]
    lines = ["## Training", ""]
    if not runs:
        return [*lines, "No lmforge training run was found in this model's lineage.", ""]
    for node in runs:
        run_dir = Path(node["path"])
        config = read_run_config(run_dir)
        summary = node.get("details") or {}
        lines += [f"**{node['stage']}** in `{run_dir}` ({node.get('started', '?')}, {node.get('status', '?')}).", ""]
        rows: list[list[Any]] = []
        for key in ("steps", "tokens", "train_seconds", "val_loss", "val_ppl", "best_val_loss", "best_step",
                    "stop_reason", "accuracy", "macro_f1"):  # fmt: skip
            if key in summary:
                rows.append([key.replace("_", " "), summary[key]])
        train = dict(config.get("train") or {})
        for key in ("data", "out", "device", "resume", "threads", "sample_prompt", "compile", "strategy"):
            train.pop(key, None)
        rows.append(["train config", _settings(train)])
        if node["stage"] == "finetune":
            ft = config.get("finetune") or {}
            rows.append(["finetune config", _settings(ft)])
            if ft.get("method") == "lora":
                rows.append(["lora config", _settings(config.get("lora") or {})])
        lines += [*_table(["", ""], rows), ""]
    return lines


def _eval_section(reports: list[dict[str, Any]]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not reports:
        return [*lines, "No evaluation report was found (run `lmforge evaluate`, or name one with "
                        "`export.eval_reports=[DIR]`).", ""]  # fmt: skip
    rows = []
    for report in reports:
        for name, task in report["tasks"].items():
            if not isinstance(task, dict):
                continue
            metrics = task.get("metrics") or {}
            shown = ", ".join(f"{k} {_cell(v)}" for k, v in list(metrics.items())[:4])
            rows.append([name, task.get("n"), shown, f"`{report['_path']}`"])
    return [*lines, *_table(["task", "examples", "metrics", "report"], rows), ""]


def _onnx_section(out_dir: Path) -> list[str]:
    report = _read_json(out_dir / "onnx_report.json")
    if not report:
        return []
    check = report.get("check", {})
    lines = ["## ONNX", "", f"Exported with {report.get('exporter', '?')}, opset {report.get('opset', '?')}. "
             f"onnxruntime's logits against PyTorch's on random tokens: max |difference| "
             f"{_cell(check.get('max_abs_diff'))} (limit {_cell(check.get('atol'))}).", ""]  # fmt: skip
    rows = [[f"`{c['graph']}`", c["batch"], c["past"], c["seq"], c["max_abs_diff"]] for c in check.get("cases", [])]
    lines += [*_table(["graph", "batch", "cached tokens", "new tokens", "max abs diff"], rows), ""]
    int8 = report.get("int8")
    if int8:
        lines += [f"`{int8['file']}`: {int8['method']}; {int8['bytes']:,} bytes ({int8['size_ratio']:.0%} of fp32's "
                  f"{int8['fp32_bytes']:,}); logits differ from fp32 by at most {_cell(int8['max_abs_diff_vs_fp32'])}, "
                  f"the most likely next token agrees {int8['top1_agreement_vs_fp32']:.1%} of the time.", ""]  # fmt: skip
    return lines


def _lineage_section(chain: list[dict[str, Any]]) -> list[str]:
    lines = ["## Lineage", "", "From this model back to its raw data (`lmforge.export.model_card.lineage_chain`). "
             "`unchanged`: the sha256 recorded when the later step read the file still matches it.", ""]  # fmt: skip
    rows = []
    for n in chain:
        what = n.get("stage") or n["kind"]
        digest = (n.get("weights") or {}).get("sha256") or n.get("manifest_sha256") or n.get("sha256")
        made_from = "; ".join(
            f"#{link['parent']} ({link['via']}"
            + ({True: ", unchanged", False: ", CHANGED since"}.get(link["unchanged"], "") + ")")
            for link in n.get("links", [])
        )
        rows.append([f"#{n['id']}", what, f"`{n['path']}`", _short(digest), n.get("started"), made_from or "–"])
    lines += _table(["#", "step", "path", "sha256", "when", "made from"], rows)
    raw = [s for n in chain for s in n.get("sources", [])]
    if raw:
        lines += ["", "Raw inputs:", ""]
        lines += _table(["file", "sha256", "unchanged"],
                        [[f"`{s['path']}`", f"`{s.get('sha256')}`", s.get("unchanged")] for s in raw])  # fmt: skip
    return [*lines, ""]


def write_model_card(loaded: LoadedModel, out_dir: Path, fmt: str, ec: ExportConfig) -> Path:
    """README.md in `out_dir` (atomically); returns its path."""
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, model_card(loaded, fmt, Path(out_dir), list(ec.eval_reports), ec.dtype))
    return path
