"""`lmforge sweep`: Optuna trials as real training processes, median pruning on their evaluations,
the results table, the plot, and the best config ready to rerun."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import SHARED_CONFIG, run_cli

from lmforge.config import load_config

GOOD, USELESS = 0.02, 1.0e-6  # a learning rate that learns in 20 steps, and one that cannot


def _sweep_file(path: Path, shards: Path, **sweep: object) -> Path:
    train = {**SHARED_CONFIG["train"], "max_steps": 20, "eval_every": 5, "save_every": 1000, "log_every": 5,
             "sample_every_eval": False, "schedule": {"warmup_steps": 0}}  # fmt: skip
    tree = {**SHARED_CONFIG, "train": train,
            "sweep": {"command": "pretrain", "inputs": [str(shards)], "n_trials": 3, "seed": 0,
                      "pruner_startup_trials": 1, "pruner_warmup_steps": 0,
                      "params": {"train.optim.lr": {"choices": [GOOD, USELESS]}}, **sweep}}  # fmt: skip
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_trials_are_run_pruned_tabled_plotted_and_the_best_written(done_pipeline: dict, tmp_path: Path) -> None:
    shards = done_pipeline["out"] / "encode"
    out = tmp_path / "sweep"
    code, printed, err = run_cli(["sweep", str(_sweep_file(tmp_path / "s.yaml", shards)), "--out", str(out)])
    assert code == 0, err

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    by_lr: dict[float, list[dict[str, str]]] = {}
    for r in rows:
        by_lr.setdefault(float(r["train.optim.lr"]), []).append(r)
    assert set(by_lr) == {GOOD, USELESS}, "the seeded sampler tries both values in three trials"
    good_done = [int(r["trial"]) for r in by_lr[GOOD] if r["state"] == "complete"]
    assert good_done, rows
    # A useless trial that starts after a good one finished falls behind the median at its first
    # evaluation and is stopped there; every complete trial evaluated 4 times (steps 5, 10, 15, 20).
    late_useless = [r for r in by_lr[USELESS] if int(r["trial"]) > min(good_done)]
    assert late_useless and all(r["state"] == "pruned" and r["evaluations"] == "1" for r in late_useless), rows
    assert all(r["evaluations"] == "4" for r in rows if r["state"] == "complete")
    best = min((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["val_loss"]))
    assert float(best["train.optim.lr"]) == GOOD

    # The best config reruns as it is: the searched value in it, the sweep section gone.
    best_cfg = load_config(out / "best.yaml")
    assert best_cfg.train.optim.lr == GOOD and best_cfg.sweep.params == {}
    assert f"lmforge pretrain {shards}" in (out / "best.yaml").read_text()
    assert (out / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| trial | state | val_loss | train.optim.lr |" in printed and f"best: trial {best['trial']}" in printed
    # Each trial was a real `lmforge pretrain` run with its own metrics.
    assert (Path(best["dir"]) / "metrics.jsonl").is_file()


@pytest.mark.parametrize(("params", "message"), [
    ({"train.optim.lrr": {"low": 0.1, "high": 1.0}}, "unknown config key 'train.optim.lrr' (did you mean 'train.optim.lr'?)"),
    ({"train.optim.lr": {"low": 1.0, "high": 0.1}}, "sweep.params.train.optim.lr: needs low < high"),
    ({"train.optim.lr": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
    ({"model.n_layer": {"choices": ["two"]}}, "config key 'model.n_layer': expected int, got 'two'"),
    ({}, "sweep.params is empty"),
])  # fmt: skip
def test_bad_search_spaces(params: dict, message: str, tmp_path: Path, done_pipeline: dict,
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from lmforge.cli import main

    config = _sweep_file(tmp_path / "s.yaml", done_pipeline["out"] / "encode", params=params)
    assert main(["sweep", str(config), "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sw").exists()


def test_a_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmforge.cli import main

    config = _sweep_file(tmp_path / "s.yaml", tmp_path / "no-shards")
    assert main(["sweep", str(config)]) == 2
    assert "sweep.inputs: no such file or directory" in capsys.readouterr().err
