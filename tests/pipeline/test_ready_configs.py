"""The ready pipeline and sweep files in configs/ are whole: every stage kind, input, config_file and key
resolves against the shared data and this lmforge's verbs (nothing is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.config import load_config
from lmforge.pipeline.spec import load_pipeline
from lmforge.pipeline.sweep import check_sweep

REPO = Path(__file__).resolve().parents[2]
PIPELINES = sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                   if p.name == "demo.yaml" or p.name.startswith("pipeline-"))  # fmt: skip


def test_the_ready_pipelines_are_there() -> None:
    assert {"demo.yaml", "pipeline-shakespeare-char.yaml", "pipeline-sst2.yaml", "pipeline-alpaca-sft.yaml",
            "pipeline-multi30k.yaml", "pipeline-zh.yaml"} <= set(PIPELINES)  # fmt: skip


@pytest.mark.parametrize("name", PIPELINES)
def test_a_ready_pipeline_resolves(name: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_SHARED_DATA", str(shared_data))
    monkeypatch.chdir(REPO)  # config_file paths are relative to the repository, like the other configs
    spec = load_pipeline(REPO / "configs" / name)
    assert spec.stages and "expected wall-clock" in (REPO / "configs" / name).read_text().lower()
    for stage in spec.stages:
        for ref in stage.inputs.values():
            assert ref.stage or all(p.exists() for p in ref.paths)
    kinds = [s.kind.kind for s in spec.stages]
    assert kinds[0] in ("prepare", "pair")


def test_the_demo_runs_every_stage_kind_but_the_optional_ones() -> None:
    spec = load_pipeline(REPO / "configs" / "demo.yaml")
    kinds = {s.kind.kind for s in spec.stages}
    assert {"prepare", "tokenizer", "encode", "pretrain", "finetune", "evaluate", "quantize", "export",
            "serve"} <= kinds  # fmt: skip


def test_the_sweep_config_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "configs" / "sweep-shakespeare.yaml", [f"sweep.inputs=[{tmp_path}]"])
    check_sweep(cfg)
    assert cfg.sweep.n_trials >= 8
