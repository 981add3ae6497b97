"""`lmforge pretrain` end to end: real runs, real subprocesses (kill -9, torchrun), no mocks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, write_shards
from safetensors.torch import load_file
from testkit import error_line, torchrun

from lmforge.cli import main
from lmforge.train import checkpoint as ckpt

BIN = Path(sys.executable).parent


def lmforge(*args: str) -> list[str]:
    return [str(BIN / "lmforge"), *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    root = run / "checkpoints"
    path = root / ckpt.step_dir_name(step) if step is not None else ckpt.read_pointer(root, "latest")
    return {k: v.clone() for k, v in load_file(str(path / "model.safetensors")).items()}  # not a live mmap


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


# --------------------------------------------------------------------------------------------------------


def test_pretrain_writes_everything(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(["pretrain", str(shards), *TINY, "train.max_steps=20", "train.save_every=10", "--out", str(out)])
        == 0
    )
    for name in ("metrics.jsonl", "loss.png", "manifest.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["event"] for r in records} == {"train", "eval", "sample"}
    evals = [r for r in records if r["event"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20] and evals[0]["val_ppl"] > 1
    sample = next(r for r in records if r["event"] == "sample")
    assert isinstance(sample["text"], str) and not sample["text"].replace(" ", "").isdigit()  # decoded text
    root = out / "checkpoints"
    latest = ckpt.read_pointer(root, "latest")
    assert latest.name == "step-0000020" and ckpt.verify(latest) is None
    assert ckpt.read_pointer(root, "best") is not None
    for name in (
        "model.safetensors",
        "model_config.json",
        "train_state.pt",
        "checksums.json",
        "tokenizer.json",
    ):
        assert (latest / name).is_file()
    state = torch.load(latest / "train_state.pt", weights_only=True)
    assert state["state"]["step"] == 20 and state["data"]["cursor"] == 20
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_kill_9_then_resume_is_bit_identical(shards: Path, tmp_path: Path) -> None:
    args = [
        "pretrain", str(shards), *TINY, "model.dropout=0.1", "train.max_steps=90", "train.save_every=10",
        "train.eval_every=1000", "train.log_every=10",
    ]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(lmforge(*args, "--out", str(full)), env=env(), stderr=subprocess.DEVNULL)
    victim_log = tmp_path / "victim.log"
    with open(victim_log, "w") as log:
        victim = subprocess.Popen(lmforge(*args, "--out", str(killed)), env=env(), stderr=log)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "latest").exists():
        assert victim.poll() is None, f"the run ended before its first checkpoint: {victim_log.read_text()[-2000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.4))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert ref.wait(timeout=120) == 0
    stopped_at = ckpt.read_pointer(killed / "checkpoints", "latest").name
    assert stopped_at != "step-0000090", "the run finished before it was killed"
    resumed = subprocess.run(
        lmforge(*args, "--resume", "--out", str(killed)), env=env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {killed / 'checkpoints' / stopped_at}" in resumed.stderr
    assert_same_weights(weights(full, 90), weights(killed, 90))
    assert losses(full) == losses(killed)


def test_corrupt_latest_checkpoint_falls_back(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["pretrain", str(shards), *TINY, "train.max_steps=30", "train.save_every=10", "train.keep_last=3"]
    assert main([*args, "--out", str(out)]) == 0
    expected = weights(out, 30)
    model_file = out / "checkpoints" / "step-0000030" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-64])  # truncated
    assert main([*args, "--resume", "--out", str(out)]) == 0
    log = (out / "logs" / "pretrain.log").read_text()
    assert "step-0000030 is bad" in log and "resuming from" in log and "step-0000020" in log
    assert_same_weights(expected, weights(out, 30))  # redone from step 20, same result


def test_nan_loss_stops_with_one_line_and_keeps_good_checkpoint(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = main([
        "pretrain", str(shards), *TINY, "train.optim.lr=1e30", "train.schedule.warmup_steps=0",
        "train.optim.grad_clip=null", "train.max_steps=20", "train.save_every=1", "--out", str(out),
    ])  # fmt: skip
    assert rc == 2
    line = error_line(capsys)
    assert "loss became" in line or "non-finite" in line
    root = out / "checkpoints"
    for d in ckpt.step_dirs(root):
        assert ckpt.verify(d) is None
        state = load_file(str(d / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in state.values())


def test_early_stopping(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([
        "pretrain", str(shards), *TINY, "train.optim.lr=0", "train.eval_every=2", "train.max_steps=40",
        "train.early_stopping_patience=1", "train.save_every=100", "--out", str(out),
    ]) == 0  # fmt: skip
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["stop_reason"] == "early_stopping" and summary["steps"] == 6


def test_time_horizon_anneals_by_the_end_of_the_budget(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([
        "pretrain", str(shards), *TINY, "train.max_steps=100000", "train.max_seconds=1.5",
        "train.schedule.horizon=time", "train.schedule.min_lr_ratio=0.1", "train.log_every=1",
        "train.eval_every=100000", "--out", str(out),
    ]) == 0  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["event"] == "train"]
    peak = max(lrs)
    assert json.loads((out / "manifest.json").read_text())["summary"]["stop_reason"] == "max_seconds"
    assert lrs[-1] < 0.2 * peak  # annealed to near min_lr although only a fraction of max_steps ran
    assert main(["pretrain", str(shards), *TINY, "train.schedule.horizon=time", "--out", str(tmp_path / "b")]) == 2
    assert "train.max_seconds" in error_line(capsys)


def test_accumulation_matches_full_batch_and_bf16_runs(shards: Path, tmp_path: Path) -> None:
    base = ["pretrain", str(shards), *TINY, "train.max_steps=4", "train.save_every=100"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "train.micro_batch_size=2", "--out", str(tmp_path / "b")]) == 0
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-4 * abs(la[k]) for k in la)
    assert (
        main([*base, "train.precision=bf16", "train.sampling=sequential", "--out", str(tmp_path / "c")]) == 0
    )


def test_activation_checkpointing_trains_to_the_same_weights(shards: Path, tmp_path: Path) -> None:
    # Recomputing the blocks in the backward pass (dropout on: its RNG is replayed) changes memory, not results.
    base = ["pretrain", str(shards), *TINY, "train.max_steps=4", "train.save_every=100", "model.dropout=0.1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "train.activation_checkpointing=true", "--out", str(tmp_path / "b")]) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no traceback, no damaged checkpoint
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert (
        main(["pretrain", str(shards), *TINY, "train.max_steps=2", "train.save_every=2", "--out", str(out)])
        == 0
    )
    return out


def test_model_vocab_smaller_than_shards(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", str(shards), *TINY, "model.vocab_size=10", "--out", str(tmp_path / "r")]) == 2
    assert "vocab" in error_line(capsys)


def test_shard_ids_beyond_declared_vocab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_shards(tmp_path / "bad", vocab_size=5)  # meta claims 5 tokens; the data holds more
    assert main(["pretrain", str(bad), *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "different tokenizer" in error_line(capsys)


def test_tokenizer_mismatch_with_init_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write_shards(tmp_path / "other", tokenizer_sha="f" * 64)
    rc = main(["pretrain", str(other), *TINY, f"train.init_from={trained}", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "tokenizer" in error_line(capsys)


def test_block_larger_than_data(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", str(shards), *TINY, "model.block_size=2048", "--out", str(tmp_path / "r")]) == 2
    assert "block_size" in error_line(capsys)


def test_unknown_preset(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", str(shards), "model.preset=gpt-nonexistent", "--out", str(tmp_path / "r")]) == 2
    assert "gpt-nonexistent" in error_line(capsys)


def test_checkpoint_of_another_architecture(
    shards: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["pretrain", str(shards), *TINY, "model.n_embd=64",
               f"train.init_from={trained}", "--out", str(tmp_path / "r")])  # fmt: skip
    assert rc == 2
    assert "another architecture" in error_line(capsys)
    before = {p.name: p.read_bytes() for p in ckpt.read_pointer(trained / "checkpoints", "latest").iterdir()}
    rc = main(["pretrain", str(shards), *TINY, "model.n_layer=3", "--resume", "--out", str(trained)])
    assert rc == 2
    assert "another architecture" in error_line(capsys)
    after = {p.name: p.read_bytes() for p in ckpt.read_pointer(trained / "checkpoints", "latest").iterdir()}
    assert before == after


def test_batch_that_does_not_fit_in_memory(
    big_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([
        "pretrain", str(big_shards), *TINY, "model.block_size=4096", "train.batch_size=100000",
        "--out", str(tmp_path / "r"),
    ])  # fmt: skip
    assert rc == 2
    line = error_line(capsys)
    assert "batch of 100000×4096 does not fit in memory" in line and "micro_batch_size" in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_fresh_run_refuses_existing_checkpoints(
    shards: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", str(shards), *TINY, "--out", str(trained)]) == 2
    assert "--resume" in error_line(capsys)


# --------------------------------------------------------------------------------------------------------
# Scale-out: 2 CPU processes under torchrun (gloo)
# --------------------------------------------------------------------------------------------------------


DIST = [*TINY, "train.max_steps=8", "train.save_every=4", "train.eval_every=4", "train.keep_last=5"]


def test_ddp_matches_single_process_and_resumes_in_one(shards: Path, tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["pretrain", str(shards), *DIST, "--out", str(single)]) == 0
    result = torchrun("pretrain", str(shards), *DIST, "--out", str(ddp))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    a, b = losses(single), losses(ddp)
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    # A checkpoint written by 2 processes resumes in one.
    shutil.rmtree(ddp / "checkpoints" / "step-0000008")
    assert main(["pretrain", str(shards), *DIST, "--resume", "--out", str(ddp)]) == 0
    ref, got = weights(single, 8), weights(ddp, 8)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)


def test_fsdp_two_processes_smoke(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "fsdp"
    result = torchrun("pretrain", str(shards), *DIST, "--strategy", "fsdp", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ckpt.verify(ckpt.read_pointer(out / "checkpoints", "latest")) is None
    shutil.rmtree(out / "checkpoints" / "step-0000008")
    assert main(["pretrain", str(shards), *DIST, "--resume", "--out", str(out)]) == 0  # full state dicts
