"""The model card and `lineage_chain`: a real chain of runs (prepare -> tokenizer -> shards -> pretrain ->
evaluate) made through the CLI with relative paths, as a user makes it, then exported; the card and the
chain are checked against the runs' own files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.export.model_card import lineage_chain
from lmforge.runs import sha256_file

TRAIN = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "train.batch_size=4",
         "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1", "train.save_every=2",
         "train.sample_tokens=4", "train.threads=1", "train.device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Path]:
    """A project directory holding raw/, data/, tok/, shards/, runs/shk/ and runs/shk-eval/."""
    root = tmp_path_factory.mktemp("project")
    (root / "raw").mkdir()
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    (root / "raw" / "shakespeare.txt").write_text(text[:150_000], encoding="utf-8")  # a slice: fast
    (root / "raw" / "eval.txt").write_text(text[-600:], encoding="utf-8")
    cwd = Path.cwd()
    os.chdir(root)  # relative paths in every manifest, as when a user works in a project directory
    try:
        for args in (
            ["prepare", "raw/shakespeare.txt", "--out", "data"],
            ["tokenizer", "train", "data", "--out", "tok", "tokenizer.kind=char"],
            ["tokenizer", "encode", "data", "--tokenizer", "tok", "--out", "shards"],
            ["pretrain", "shards", "--out", "runs/shk", *TRAIN],
            ["evaluate", "runs/shk", "-t", "lm", "eval.lm.files=[raw/eval.txt]", "--out", "runs/shk-eval",
             "--device", "cpu"],
        ):  # fmt: skip
            assert main(args) == 0, args
    finally:
        os.chdir(cwd)
    yield root


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_lineage_chain_walks_back_to_the_raw_data(chain: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded relative paths are found from the runs' places
    nodes = lineage_chain(chain / "runs" / "shk")
    steps = [n.get("stage") or n["kind"] for n in nodes]
    assert steps == ["pretrain", "shards", "tokenizer", "prepare"]
    by_stage = {n["stage"]: n for n in nodes}
    for stage, d in (("pretrain", "runs/shk"), ("shards", "shards"), ("tokenizer", "tok"), ("prepare", "data")):
        node = by_stage[stage]
        assert node["path"] == str((chain / d).resolve())
        assert node["manifest_sha256"] == sha256_file(chain / d / "manifest.json")
        assert node["config_sha256"] == manifest(chain / d)["config_sha256"] and node["status"] == "finished"
    assert by_stage["shards"]["parents"] == [by_stage["tokenizer"]["id"], by_stage["prepare"]["id"]]
    assert all(link["unchanged"] for n in nodes for link in n["links"])
    raw = by_stage["prepare"]["sources"]
    assert [Path(s["path"]).name for s in raw] == ["shakespeare.txt"]
    assert raw[0]["sha256"] == sha256_file(chain / "raw" / "shakespeare.txt") and raw[0]["unchanged"]

    checkpoint = manifest(chain / "runs" / "shk")["summary"]["checkpoint"]
    from_checkpoint = lineage_chain(chain / checkpoint)
    assert from_checkpoint[0]["kind"] == "checkpoint" and from_checkpoint[0]["links"][0]["via"] == "checkpoint of"
    sums = json.loads((chain / checkpoint / "checksums.json").read_text())["sha256"]
    assert from_checkpoint[0]["weights"]["sha256"] == sums["model.safetensors"]
    assert [n.get("stage") for n in from_checkpoint[1:]] == ["pretrain", "shards", "tokenizer", "prepare"]


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_model_card_is_written_from_the_lineage(chain: Path, tmp_path: Path, fmt: str):
    out = tmp_path / fmt
    assert main(["export", str(chain / "runs" / "shk"), "--format", fmt, "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert ("library_name: transformers" in card) == (fmt == "hf")
    if fmt == "hf":
        assert json.loads((out / "config.json").read_text())["architectures"][0] in card
    # the data: the raw file's digest and every preparation step with its counts
    report = json.loads((chain / "data" / "report.json").read_text())
    assert sha256_file(chain / "raw" / "shakespeare.txt")[:12] in card
    for step in report["steps"]:
        assert f"| {step['name']} | {step['docs_in']:,} | {step['docs_out']:,} | {step['removed']:,} |" in card
    assert "min_mean_word_length=2.0" in card  # a quality filter's setting
    # the tokenizer, the architecture, the training run and its result
    tok = manifest(chain / "tok")["tokenizer"]
    assert "| Kind | char |" in card and f"| Vocabulary | {tok['vocab_size']} |" in card
    assert "| Layers | 1 |" in card and "| Context (block size) | 32 |" in card
    summary = manifest(chain / "runs" / "shk")["summary"]
    assert f"| val loss | {summary['val_loss']:.4g} |" in card and "optim.name=\"adamw\"" in card
    # the evaluation report found beside the run
    lm = json.loads((chain / "runs" / "shk-eval" / "report.json").read_text())["tasks"]["lm"]
    assert f"| lm | {lm['n']} | loss {lm['metrics']['loss']:.4g}" in card
    # the lineage table: every run's manifest digest
    for d in ("runs/shk", "shards", "tok", "data"):
        assert sha256_file(chain / d / "manifest.json")[:12] in card
    assert "CHANGED" not in card


def test_changed_inputs_are_flagged_after_a_move(chain: Path, tmp_path: Path, monkeypatch):
    """The project moved elsewhere, then a raw file and the shards' meta.json edited: the chain still
    resolves (relative paths), and the two links say the files changed since they were read."""
    moved = tmp_path / "moved"
    shutil.copytree(chain, moved)
    monkeypatch.chdir(tmp_path)
    with open(moved / "raw" / "shakespeare.txt", "a", encoding="utf-8") as f:
        f.write("\nAn extra line.\n")
    meta = moved / "shards" / "meta.json"
    meta.write_text(meta.read_text().replace('"eos_id"', '"eos_id" ', 1))
    nodes = lineage_chain(moved / "runs" / "shk")
    by_stage = {n["stage"]: n for n in nodes}
    assert by_stage["prepare"]["path"] == str((moved / "data").resolve())
    assert by_stage["pretrain"]["links"][0]["unchanged"] is False  # it read meta.json
    assert by_stage["shards"]["links"][0]["unchanged"] is True
    assert by_stage["prepare"]["sources"][0]["unchanged"] is False

    out = tmp_path / "export"
    assert main(["export", str(moved / "runs" / "shk"), "-f", "safetensors", "-o", str(out),
                 f"export.eval_reports=[{moved / 'runs' / 'shk-eval'}]"]) == 0  # fmt: skip
    card = (out / "README.md").read_text()
    assert "CHANGED since" in card and "| lm |" in card


def test_lineage_of_an_export_and_a_missing_path(chain: Path, tmp_path: Path):
    out = tmp_path / "st"
    assert main(["export", str(chain / "runs" / "shk"), "-f", "safetensors", "-o", str(out)]) == 0
    nodes = lineage_chain(out)
    assert [n.get("stage") or n["kind"] for n in nodes] == ["export", "checkpoint", "pretrain", "shards",
                                                            "tokenizer", "prepare"]  # fmt: skip
    with pytest.raises(Exception, match="no such model or run directory"):
        lineage_chain(tmp_path / "nowhere")
