"""`lmforge pipeline`: every stage in order, outputs linked, cached reruns, --force, changed config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pipeline_helpers import manifest, run_cli, stage_status, write_pipeline

STAGES = ["prepare", "tokenizer", "encode", "pretrain", "classify-full", "classify-lora", "evaluate", "export",
          "quantize", "serve"]


def test_every_stage_runs_in_order_into_its_own_directory(done_pipeline: dict) -> None:
    out: Path = done_pipeline["out"]
    pipe = manifest(out)
    assert pipe["stage"] == "pipeline" and pipe["status"] == "finished"
    assert [s["name"] for s in pipe["stages"]] == STAGES
    assert set(stage_status(out).values()) == {"ran"}
    for name in STAGES:
        stage = manifest(out / name)
        assert stage["status"] == "finished", name
        assert stage["pipeline"]["cache_key"] == next(s for s in pipe["stages"] if s["name"] == name)["cache_key"]
        # The config the stage ran with is kept, and it is the one the stage's own run directory resolved.
        ran_with = yaml.safe_load((out / "configs" / f"{name}.yaml").read_text())
        assert ran_with["run"]["seed"] == 7 and "pipeline" not in ran_with
    # Each stage read the previous one's output, unless its inputs named another.
    by_name = {s["name"]: s for s in pipe["stages"]}
    assert by_name["tokenizer"]["inputs"]["data"]["from"] == "prepare"
    assert by_name["encode"]["inputs"]["tokenizer"]["from"] == "tokenizer"
    assert by_name["classify-lora"]["inputs"]["base"]["from"] == "pretrain"
    assert by_name["evaluate"]["inputs"]["model"]["from"] == "pretrain"
    assert by_name["evaluate"]["inputs"]["data"]["from"] == "prepare"  # the `lm` task's text
    assert by_name["serve"]["inputs"]["model"]["from"] == "quantize"
    assert by_name["export"]["inputs"]["model"]["from"] == "classify-lora"  # the nearest model before it
    # Stage overrides reached the stage: the LoRA fine-tune wrote an adapter, the full one did not.
    assert (out / "classify-lora" / "adapter").is_dir() and not (out / "classify-full" / "adapter").exists()
    assert yaml.safe_load((out / "configs" / "classify-lora.yaml").read_text())["finetune"]["method"] == "lora"


def test_compression_and_the_serve_check(done_pipeline: dict) -> None:
    out: Path = done_pipeline["out"]
    report = json.loads((out / "quantize" / "compress_report.json").read_text())
    assert report["stage"] == "quantize" and report["source"] == str((out / "pretrain").resolve())
    assert report["after"]["bytes_on_disk"] < report["before"]["bytes_on_disk"]
    check = json.loads((out / "serve" / "serve_check.json").read_text())
    assert check["status"] == 200 and isinstance(check["completion"], str)
    assert check["url"].startswith("http://127.0.0.1:")
    assert check["command"][:3] == ["lmforge", "serve", str((out / "quantize").resolve())]
    assert manifest(out / "serve")["status"] == "finished"


def test_the_pipeline_manifest_links_every_artifact(done_pipeline: dict) -> None:
    out: Path = done_pipeline["out"]
    pipe = manifest(out)
    artifacts = pipe["artifacts"]
    weights = next(p for p in artifacts if p.startswith("pretrain/checkpoints/") and p.endswith("model.safetensors"))
    assert artifacts[weights]["stage"] == "pretrain" and artifacts[weights]["from"] == ["encode"]
    assert artifacts[weights]["sha256"] == hashlib.sha256((out / weights).read_bytes()).hexdigest()
    assert artifacts[weights]["config"] == "configs/pretrain.yaml"
    data = next(p for p in artifacts if p.startswith("prepare/"))
    assert artifacts[data]["from"] == [str(Path(pipe["stages"][0]["inputs"]["files"]["paths"][0]))]
    raw = pipe["inputs"][0]
    assert raw["files"][0]["sha256"] == hashlib.sha256(Path(raw["path"]).read_bytes()).hexdigest()


def test_the_summary_table_and_sample_are_printed(done_pipeline: dict) -> None:
    printed = done_pipeline["stdout"]
    out: Path = done_pipeline["out"]
    assert "| stage | status | seconds | figures | directory |" in printed
    for name in STAGES:
        assert f"| {name}" in printed
    assert "val loss" in printed and "perplexity" in printed and "params" in printed
    assert "sample from quantize" in printed  # the last language model the pipeline made
    assert (out / "summary.md").read_text() in printed


def test_a_cached_rerun_skips_every_stage(pipeline_copy: tuple[Path, Path]) -> None:
    config, out = pipeline_copy
    before = {name: (out / name / "manifest.json").stat().st_mtime_ns for name in STAGES}
    code, _, err = run_cli(["pipeline", str(config), "--out", str(out)])
    assert code == 0, err
    assert set(stage_status(out).values()) == {"cached"}
    assert err.count("cached, skipped") == len(STAGES)
    assert {name: (out / name / "manifest.json").stat().st_mtime_ns for name in STAGES} == before


def test_a_changed_stage_config_reruns_it_and_what_depends_on_it(pipeline_copy: tuple[Path, Path]) -> None:
    config, out = pipeline_copy
    code, _, err = run_cli(["pipeline", str(config), "--out", str(out), "classify-full.train.max_steps=3"])
    assert code == 0, err
    status = stage_status(out)
    assert status["classify-full"] == "ran"
    assert all(status[name] == "cached" for name in STAGES if name != "classify-full")
    assert manifest(out / "classify-full")["pipeline"]["command"][:2] == ["lmforge", "finetune"]


def test_force_reruns_from_the_named_stage_on(pipeline_copy: tuple[Path, Path], tmp_path: Path) -> None:
    config, out = pipeline_copy
    tree = yaml.safe_load(config.read_text())
    tree["pipeline"]["stages"] = tree["pipeline"]["stages"][:8]  # up to export: no server to start again
    shorter = tmp_path / "shorter.yaml"
    shorter.write_text(yaml.safe_dump(tree))
    code, _, err = run_cli(["pipeline", str(shorter), "--out", str(out), "--force", "evaluate"])
    assert code == 0, err
    status = stage_status(out)
    assert [status[n] for n in STAGES[:8]] == ["cached"] * 6 + ["ran"] * 2


def test_a_changed_input_file_invalidates_the_cache(pipeline_copy: tuple[Path, Path], tmp_path: Path) -> None:
    config, out = pipeline_copy
    tree = yaml.safe_load(config.read_text())
    source = Path(tree["pipeline"]["stages"][0]["inputs"])
    edited = tmp_path / "edited.txt"
    edited.write_text(source.read_text() + "\nA LINE NOBODY WROTE.\n")
    tree["pipeline"]["stages"] = tree["pipeline"]["stages"][:3]  # prepare, tokenizer, encode
    tree["pipeline"]["stages"][0]["inputs"] = str(edited)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(tree))
    code, printed, err = run_cli(["pipeline", str(changed), "--out", str(out), "--dry-run"])
    assert code == 0, err
    assert "| prepare | prepare |" in printed and "run (config or inputs changed)" in printed
    assert "run if prepare changes its outputs" in printed
    code, _, err = run_cli(["pipeline", str(changed), "--out", str(out)])
    assert code == 0, err
    assert stage_status(out) == {"prepare": "ran", "tokenizer": "ran", "encode": "ran"}


def test_pair_turns_parallel_files_into_records_that_prepare_reads(shared_data: Path, sources: dict[str, Path],
                                                                   tmp_path: Path) -> None:  # fmt: skip
    m30k = shared_data / "translation" / "multi30k"
    stages = [{"stage": "pair", "inputs": {"source": str(m30k / "val.en"), "target": str(m30k / "val.de")},
               "config": {"pipeline": {"pair": {"max_records": 50}}}},
              {"stage": "prepare", "inputs": "pair", "config": {"data": {"split": {"val": 0.2}}}}]  # fmt: skip
    config = write_pipeline(tmp_path / "p.yaml", sources, tmp_path / "out", stages, sample_prompt=None,
                            pair={"instruction": "Translate to German."})  # fmt: skip
    code, _, err = run_cli(["pipeline", str(config)])
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "out" / "pair" / "records.jsonl").read_text().splitlines()]
    english = (m30k / "val.en").read_text().splitlines()[0].strip()
    german = (m30k / "val.de").read_text().splitlines()[0].strip()
    assert len(records) == 50
    assert records[0] == {"instruction": "Translate to German.", "input": english, "output": german}
    prepared = manifest(tmp_path / "out" / "prepare")
    assert [Path(i["path"]).name for i in prepared["inputs"]] == ["records.jsonl"]  # the file, not the run dir
    assert json.loads((tmp_path / "out" / "prepare" / "report.json").read_text())["docs_out"] == 50
