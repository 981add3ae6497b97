"""Bad pipeline files and arguments: one line naming the file, stage and key; exit status 2; nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pipeline_helpers import SHARED_CONFIG, manifest, write_pipeline


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], alone: bool = True) -> str:
    """The error line of a failing command (alone: nothing else printed, the input was refused up front)."""
    from lmforge.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert len(lines) == 1 or not alone, err
    assert "Traceback" not in err
    return lines[-1]


def _pipeline(tmp_path: Path, sources: dict[str, Path], stages: list[dict]) -> Path:
    return write_pipeline(tmp_path / "p.yaml", sources, tmp_path / "out", stages)


def test_a_kind_named_twice_without_distinct_names(tmp_path: Path, sources: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    stages = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer"}, {"stage": "encode"},
              {"stage": "pretrain"}, {"stage": "finetune", "inputs": {"data": str(sources["sst2"])}},
              {"stage": "finetune", "inputs": {"data": str(sources["sst2"])}}]  # fmt: skip
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "p.yaml" in line and "stage kind 'finetune' appears twice (stages 5 and 6)" in line and "name" in line
    assert not (tmp_path / "out").exists()

    stages[4]["name"] = stages[5]["name"] = "sft"
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "stage name 'sft' is used twice (stages 5 and 6)" in line


def test_an_input_naming_a_stage_that_does_not_exist(tmp_path: Path, sources: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    stages = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer", "inputs": "prepair"}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "stage 'tokenizer'" in line and "'prepair' is neither an earlier stage (did you mean 'prepare'?)" in line

    later = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer", "inputs": "encode"},
             {"stage": "encode"}]  # fmt: skip
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, later))], capsys)
    assert "names stage 'encode', which runs later" in line

    slot = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer", "inputs": {"dta": "prepare"}}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, slot))], capsys)
    assert "unknown input 'dta' (did you mean 'data'?)" in line


def test_unknown_keys_in_a_stage_section(tmp_path: Path, sources: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    stages = [{"stage": "prepare", "inputs": str(sources["text"]), "config": {"train": {"max_step": 3}}}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "p.yaml: stage 'prepare': unknown config key 'train.max_step' (did you mean 'train.max_steps'?)" in line

    stages = [{"stage": "prepare", "inputs": str(sources["text"]), "confg": {}}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "pipeline.stages[1]: unknown key 'confg' (did you mean 'config'?)" in line

    stages = [{"stage": "prepar", "inputs": str(sources["text"])}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "unknown stage kind 'prepar' (did you mean 'prepare'?)" in line

    stages = [{"stage": "prepare", "inputs": str(sources["text"]), "config": {"data": {"split": {"val": "most"}}}}]
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys)
    assert "stage 'prepare': config key 'data.split.val': expected float" in line


def test_bad_command_line_overrides_and_force(tmp_path: Path, sources: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    config = _pipeline(tmp_path, sources, [{"stage": "prepare", "inputs": str(sources["text"])}])
    line = _fails(["pipeline", str(config), "prepare.data.splt.val=0.2"], capsys)
    assert "stage 'prepare': unknown config key 'data.splt.val' (did you mean 'data.split.val'?)" in line
    line = _fails(["pipeline", str(config), "prepaer.data.split.val=0.2"], capsys)
    assert "no stage named 'prepaer' (did you mean 'prepare'?)" in line
    line = _fails(["pipeline", str(config), "--force", "tokenizr"], capsys)
    assert "no stage named 'tokenizr'" in line and "stages: prepare" in line


def test_bad_files(tmp_path: Path, sources: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["pipeline", str(tmp_path / "missing.yaml")], capsys)
    assert line == f"error: pipeline file not found: {tmp_path / 'missing.yaml'}"

    broken = tmp_path / "broken.yaml"
    broken.write_text("pipeline:\n  stages:\n    - stage: prepare\n   inputs: [a\n")
    line = _fails(["pipeline", str(broken)], capsys)
    assert line.startswith(f"error: {broken}:4:")

    unset = tmp_path / "unset.yaml"
    unset.write_text("# ${IN_A_COMMENT} is left alone\n"
                     "pipeline:\n  stages:\n    - stage: prepare\n      inputs: ${LMFORGE_TEST_SURELY_UNSET}/x.txt\n")
    line = _fails(["pipeline", str(unset)], capsys)
    assert f"{unset}: pipeline.stages[1].inputs: environment variable LMFORGE_TEST_SURELY_UNSET is not set" in line

    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump(SHARED_CONFIG))
    assert "no stages" in _fails(["pipeline", str(empty)], capsys)

    missing_input = _pipeline(tmp_path, sources, [{"stage": "prepare", "inputs": str(tmp_path / "nope.txt")}])
    line = _fails(["pipeline", str(missing_input)], capsys)
    assert "input 'files'" in line and "nope.txt' is neither an earlier stage" in line

    no_source = _pipeline(tmp_path, sources, [{"stage": "pretrain"}])
    line = _fails(["pipeline", str(no_source)], capsys)
    assert "stage 'pretrain': needs input 'shards'" in line


def test_a_stage_that_fails_stops_the_pipeline_with_its_name(tmp_path: Path, sources: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    stages = [{"stage": "prepare", "inputs": str(sources["text"])}, {"stage": "tokenizer"}, {"stage": "encode"},
              {"stage": "pretrain", "config": {"model": {"n_head": 3}}}]  # fmt: skip
    line = _fails(["pipeline", str(_pipeline(tmp_path, sources, stages))], capsys, alone=False)
    assert line.startswith("error: stage 'pretrain' (pretrain): ") and "n_head" in line
    out = tmp_path / "out"
    assert manifest(out)["status"] == "failed"
    assert manifest(out / "encode")["status"] == "finished"


def test_lineage_of_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(["lineage", str(tmp_path / "nothing")], capsys)
    assert "no such file or directory" in line
    loose = tmp_path / "loose.txt"
    loose.write_text("x")
    assert "is in no run directory" in _fails(["lineage", str(loose)], capsys)
