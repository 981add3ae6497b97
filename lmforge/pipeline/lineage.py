"""`lmforge lineage ARTIFACT`: the chain from an artifact back to the raw files it was made from.

The walk itself is `lmforge.export.model_card.lineage_chain` (one implementation, shared with the model
card): it follows each run's manifest.json inputs (with their sha256) to the runs that wrote them, a
checkpoint to its run, an adapter or fine-tune to its base model, down to raw files. This module adds what
the command needs around it: a pipeline directory as the artifact (each final stage's chain), the tree as
text, and the list of raw inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.export.model_card import lineage_chain
from lmforge.runs import sha256_file

__all__ = ["format_lineage", "lineage", "lineage_chain", "raw_inputs"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pipeline_roots(path: Path) -> list[Path] | None:
    """For a pipeline directory, its stages that no later stage read (None for anything else)."""
    manifest = _read_json(path / "manifest.json") if path.is_dir() else {}
    if manifest.get("stage") != "pipeline":
        return None
    stages = manifest.get("stages", [])
    used = {v.get("from") for s in stages for v in s.get("inputs", {}).values()}
    return [path / s["dir"] for s in stages if s["name"] not in used and (path / s["dir"]).is_dir()]


def owner_of(file: Path) -> Path | None:
    """The model or run directory a file belongs to: a checkpoint or adapter holding it, else the nearest
    directory with a manifest.json at most three levels up."""
    d = file if file.is_dir() else file.parent
    if (d / "model_config.json").is_file() or (d / "adapter_config.json").is_file():
        return d
    return next((c for c in [d, *list(d.parents)[:3]] if (c / "manifest.json").is_file()), None)


def _merge(chain: list[dict[str, Any]], other: list[dict[str, Any]]) -> int:
    """Append `other`'s nodes to `chain` (a node already there by path is reused); the id of other's first."""
    by_path = {node["path"]: node["id"] for node in chain}
    ids: dict[int, int] = {}
    added: list[dict[str, Any]] = []
    for node in other:
        if node["path"] in by_path:
            ids[node["id"]] = by_path[node["path"]]
        else:
            ids[node["id"]] = by_path[node["path"]] = len(chain)
            chain.append({**node, "id": len(chain)})
            added.append(node)
    for node in added:
        new = chain[ids[node["id"]]]
        new["parents"] = [ids[p] for p in node["parents"]]
        new["links"] = [{**link, "parent": ids[link["parent"]]} for link in node["links"]]
    return ids[other[0]["id"]]


def _add_pipeline_links(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Follow the inputs a pipeline recorded for its stages (`pipeline.inputs` in their manifests) where the
    walk has no link of its own: an evaluation's or a compression's model, a server's model."""
    i = 0
    while i < len(chain):
        node = chain[i]
        i += 1
        if node["kind"] != "run":
            continue
        block = _read_json(Path(node["path"]) / "manifest.json").get("pipeline") or {}
        for slot, source in (block.get("inputs") or {}).items():
            if not source.get("from") or not source.get("paths"):
                continue
            target = Path(source["paths"][0]).resolve()
            parents = [Path(chain[p]["path"]) for p in node["parents"]]
            if not target.exists() or any(p == target or p.is_relative_to(target) or target.is_relative_to(p)
                                          for p in parents):  # fmt: skip
                continue
            pid = _merge(chain, lineage_chain(target))
            node["parents"].append(pid)
            node["links"].append({"parent": pid, "via": f"pipeline input {slot}", "recorded": str(target),
                                  "unchanged": None})  # fmt: skip
    return chain


def lineage(path: str | Path) -> list[list[dict[str, Any]]]:
    """One chain (see `lineage_chain`) per starting point: the artifact (a file: the checkpoint or run that
    holds it), or each final stage of a pipeline directory."""
    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such file or directory: {path}")
    roots = pipeline_roots(path)
    if roots is None:
        owner = owner_of(path)
        if owner is None:
            raise LmforgeError(f"{path} is in no run directory (no manifest.json found above it)")
        roots = [owner]
    return [_add_pipeline_links(lineage_chain(root)) for root in roots]


def raw_inputs(chains: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The raw files at the ends of the chains, each once: {path, sha256, bytes, unchanged}."""
    found: dict[str, dict[str, Any]] = {}
    for chain in chains:
        for node in chain:
            for source in node.get("sources", []):
                found.setdefault(source["path"], source)
    return list(found.values())


def _shown(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _short(sha: str | None) -> str:
    return sha[:12] + "…" if sha else "-"


def _describe(node: dict[str, Any]) -> str:
    kind = node["kind"]
    if kind == "run":
        facts = [node.get("stage") or "run", _shown(node["path"]), str(node.get("status", "")), node.get("started") or ""]
        if node.get("config_sha256"):
            facts.append(f"config {_short(node['config_sha256'])}")
    elif kind == "missing":
        facts = ["MISSING", node["path"]]
    else:
        facts = [kind, _shown(node["path"])]
    weights = node.get("weights") or {}
    if weights.get("sha256"):
        facts.append(f"{weights.get('file')} {_short(weights['sha256'])}")
    return "  ".join(f for f in facts if f)


def format_lineage(path: str | Path) -> str:
    """The chain as a tree: the artifact, what made it, and each input back to the raw files with sha256."""
    path = Path(path)
    chains = lineage(path)
    lines = [f"{_shown(path)}  sha256 {sha256_file(path)}" if path.is_file() else f"{_shown(path)}/"]
    for chain in chains:
        shown: set[int] = set()

        def walk(node_id: int, prefix: str, last: bool, via: str, chain: list[dict[str, Any]] = chain,
                 shown: set[int] = shown) -> None:  # fmt: skip
            node = chain[node_id]
            again = node_id in shown
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_describe(node)}{via}{'  (shown above)' if again else ''}")
            if again:
                return
            shown.add(node_id)
            below = prefix + ("    " if last else "│   ")
            links = node.get("links", [])
            sources = node.get("sources", [])
            for i, link in enumerate(links):
                flag = {True: "", False: "  CHANGED SINCE it was read", None: ""}[link.get("unchanged")]
                walk(link["parent"], below, i == len(links) - 1 and not sources, f"  ({link['via']}){flag}")
            for i, source in enumerate(sources):
                flag = "" if source.get("unchanged") is not False else "  CHANGED ON DISK since it was read"
                missing = "" if source.get("found", True) else "  (not found)"
                lines.append(f"{below}{'└── ' if i == len(sources) - 1 else '├── '}raw  {_shown(source['path'])}  "
                             f"sha256 {source.get('sha256')}{flag}{missing}")  # fmt: skip

        walk(0, "", True, "")
    raw = raw_inputs(chains)
    if raw:
        lines += ["", "raw inputs:"]
        lines += [f"  {r.get('sha256')}  {_shown(r['path'])}" for r in raw]
    return "\n".join(lines) + "\n"
