"""`lmforge lineage ARTIFACT`: the chain of runs back to the raw files, with their sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline_helpers import run_cli, write_pipeline

from lmforge.pipeline.lineage import lineage, raw_inputs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _runs(chains: list[list[dict]]) -> set[str]:
    return {Path(n["path"]).name for chain in chains for n in chain if n["kind"] == "run"}


def test_an_exported_model_traces_back_to_both_raw_files(done_pipeline: dict, sources: dict[str, Path]) -> None:
    out: Path = done_pipeline["out"]
    weights = out / "export" / "model.safetensors"
    code, printed, err = run_cli(["lineage", str(weights)])
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[0].endswith(f"sha256 {_sha(weights)}")
    assert lines[1].startswith("└── export ")
    # export <- the LoRA adapter (over pretrain's checkpoint, trained on SST-2) <- pretrain <- shards <- ...
    for stage in ("finetune", "pretrain", "shards", "tokenizer", "prepare"):
        assert any(line.split("── ", 1)[-1].startswith(stage + " ") for line in lines), (stage, printed)
    for source in (sources["text"], sources["sst2"]):
        assert f"sha256 {_sha(source)}" in printed
    assert "CHANGED" not in printed

    code, printed, err = run_cli(["lineage", str(weights), "--json"])
    assert code == 0, err
    found = json.loads(printed)
    assert _runs(found["chains"]) == {"export", "classify-lora", "pretrain", "encode", "tokenizer", "prepare"}
    assert {Path(r["path"]).name: r["sha256"] for r in found["raw_inputs"]} == {
        "shakespeare.txt": _sha(sources["text"]), "sst2.tsv": _sha(sources["sst2"])}  # fmt: skip


def test_a_run_directory_and_a_whole_pipeline(done_pipeline: dict, sources: dict[str, Path]) -> None:
    out: Path = done_pipeline["out"]
    chains = lineage(out / "pretrain")
    assert _runs(chains) == {"pretrain", "encode", "tokenizer", "prepare"}
    assert [Path(r["path"]) for r in raw_inputs(chains)] == [sources["text"]]
    # A whole pipeline: every stage; the evaluation linked to the model it measured through the pipeline's
    # record (its own manifest lists only the task's files, here prepare's val split).
    chains = lineage(out)
    assert _runs(chains) == {"prepare", "tokenizer", "encode", "pretrain", "classify-full", "classify-lora",
                             "evaluate", "export", "quantize", "serve"}  # fmt: skip
    evaluate = next(c for c in chains if Path(c[0]["path"]).name == "evaluate")
    parents = {link["via"]: Path(evaluate[link["parent"]]["path"]).name for link in evaluate[0]["links"]}
    assert parents == {"input": "prepare", "pipeline input model": "pretrain"}  # its text, and its model


def test_a_changed_upstream_output_is_flagged(sources: dict[str, Path], tmp_path: Path) -> None:
    stages = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer"}]
    out = tmp_path / "out"
    code, _, err = run_cli(["pipeline", str(write_pipeline(tmp_path / "p.yaml", sources, out, stages))])
    assert code == 0, err
    code, printed, _ = run_cli(["lineage", str(out / "tokenizer" / "tokenizer.json")])
    assert code == 0 and "CHANGED" not in printed
    manifest_file = out / "prepare" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    train = next(o for o in manifest["outputs"] if o["path"] == "train.jsonl.zst")
    train["sha256"] = "0" * 64  # as if prepare had been rerun and had written other data since
    manifest_file.write_text(json.dumps(manifest))
    code, printed, _ = run_cli(["lineage", str(out / "tokenizer" / "tokenizer.json")])
    assert code == 0
    assert "prepare" in printed and "CHANGED SINCE it was read" in printed
