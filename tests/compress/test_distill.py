"""`lmforge distill`: a distilled student matches its teacher better than the same student trained on
cross-entropy alone; the student is an ordinary checkpoint that resumes bit for bit; cached teacher logits
give the same training as logits computed on the fly; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from compress_helpers import error_line, report_of
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.infer.load import load_model

STUDENT = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64",
    "train.batch_size=16", "train.max_steps=60", "train.eval_every=30", "train.eval_batches=1",
    "train.save_every=30", "train.keep_last=3", "train.schedule.warmup_steps=5", "train.optim.lr=6e-3",
    "train.sample_every_eval=false", "train.log_every=10", "train.device=cpu",
    "compress.eval.windows=16", "compress.eval.gen_tokens=8", "compress.eval.repeats=1",
]  # fmt: skip


def distill(shards: Path, teacher: Path, out: Path, *extra: str) -> dict:
    assert main(["distill", str(shards), "--teacher", str(teacher), "--out", str(out), *STUDENT, *extra]) == 0
    return report_of(out)


@pytest.fixture(scope="module")
def distilled(shards: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "kd"
    distill(shards, teacher, out, "compress.distill.alpha=0.9", "compress.distill.temperature=1")
    return out


def test_distilled_student_matches_teacher_better_than_ce_alone(distilled: Path, shards: Path, teacher: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    kd = report_of(distilled)
    ce = distill(shards, teacher, tmp_path / "ce", "compress.distill.alpha=0")  # same student, steps, data
    assert kd["after"]["teacher_kl"] < 0.9 * ce["after"]["teacher_kl"]
    assert kd["after"]["parameters"] == ce["after"]["parameters"] < kd["before"]["parameters"]
    assert kd["before"]["perplexity"] < kd["after"]["perplexity"]  # the small student does not beat its teacher


def test_student_is_an_ordinary_checkpoint(distilled: Path, teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    student = load_model(distilled)
    assert student.kind == "lmforge" and student.tokenizer is not None
    assert (student.model.config.n_layer, student.model.config.n_embd) == (1, 32)
    assert student.model.config.vocab_size == load_model(teacher).model.config.vocab_size
    info = json.loads((student.source / "info.json").read_text())
    assert info["stage"] == "distill" and info["step"] == 60 and info["alpha"] == 0.9
    assert main(["generate", str(distilled), "--prompt", "To be", "generate.max_new_tokens=8", "generate.seed=0"]) == 0
    assert capsys.readouterr().out.startswith("To be")
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["status"] == "finished" and any(o["path"] == "compress_report.json" for o in manifest["outputs"])


def test_resume_continues_bit_for_bit(distilled: Path, shards: Path, teacher: Path, tmp_path: Path) -> None:
    """Drop the last checkpoint of the finished run and resume from step 30: the same step-60 weights."""
    interrupted = tmp_path / "interrupted"
    shutil.copytree(distilled, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-0000060")
    (interrupted / "checkpoints" / "latest").write_text("step-0000030\n")
    (interrupted / "checkpoints" / "best").unlink(missing_ok=True)
    distill(shards, teacher, interrupted, "compress.distill.alpha=0.9", "compress.distill.temperature=1", "--resume")
    resumed = load_file(str(interrupted / "checkpoints" / "step-0000060" / "model.safetensors"))
    straight = load_file(str(distilled / "checkpoints" / "step-0000060" / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


def test_cached_teacher_logits_train_like_on_the_fly(distilled: Path, shards: Path, teacher: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cache_dir = tmp_path / "cache"
    options = ["compress.distill.alpha=0.9", "compress.distill.temperature=1", "compress.distill.cache_teacher=true",
               f"compress.distill.cache_dir={cache_dir}"]  # fmt: skip
    cached = distill(shards, teacher, tmp_path / "cached", *options)
    meta = json.loads((cache_dir / "cache.json").read_text())
    assert meta["filled"] == meta["steps"] == 60
    assert (cache_dir / "logits.f16").stat().st_size == 60 * 16 * 64 * meta["key"]["vocab_size"] * 2
    # float16 logits: the same run up to rounding.
    on_the_fly = report_of(distilled)
    assert cached["after"]["val_loss"] == pytest.approx(on_the_fly["after"]["val_loss"], rel=1e-2)
    assert cached["after"]["teacher_kl"] == pytest.approx(on_the_fly["after"]["teacher_kl"], rel=5e-2)
    # Another run over the same teacher, data and batches reuses the cache instead of recomputing it.
    capsys.readouterr()
    distill(shards, teacher, tmp_path / "again", *options, "compress.distill.alpha=0.5", "train.max_steps=10")
    assert "reusing cached teacher logits" in capsys.readouterr().err


def test_bad_inputs(shards: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "bad")
    line = error_line(capsys, ["distill", str(shards), "--teacher", str(teacher), "--out", out, *STUDENT,
                               "model.vocab_size=500"])  # fmt: skip
    assert "teacher/student vocabulary mismatch" in line and "500" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no usable checkpoint" in error_line(capsys, ["distill", str(shards), "--teacher", str(empty), "--out", out])
    assert "no teacher given" in error_line(capsys, ["distill", str(shards), "--out", out])
    line = error_line(capsys, ["distill", str(shards), "--teacher", str(teacher), "compress.distill.alpha=1.5",
                               "--out", out])  # fmt: skip
    assert "compress.distill.alpha must be in [0, 1]" in line
    assert "not a token-shard directory" in error_line(
        capsys, ["distill", str(empty), "--teacher", str(teacher), "--out", out])
    assert not Path(out).exists()
