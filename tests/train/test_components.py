"""Unit tests of the training components: schedules, optimizers, sampling, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lmforge.config import OptimConfig, ScheduleConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.train import checkpoint as ckpt
from lmforge.train.data import BatchSampler, TokenSplit, eval_offsets, read_meta
from lmforge.train.loop import rng_state, set_rng_state
from lmforge.train.optim import Schedule, build_optimizer, param_groups


def tiny_model() -> GPT:
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))


def test_warmup_then_cosine_linear_step_constant() -> None:
    cos = Schedule(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1), 1.0, 110)
    assert cos.lr(0) == pytest.approx(0.1)
    assert cos.lr(9) == pytest.approx(1.0)
    assert cos.lr(10) == pytest.approx(1.0)
    assert cos.lr(60) == pytest.approx(0.55)
    assert cos.lr(110) == pytest.approx(0.1)
    assert cos.lr(500) == pytest.approx(0.1)
    lin = Schedule(ScheduleConfig(name="linear", warmup_steps=0, min_lr_ratio=0.0), 2.0, 100)
    assert lin.lr(50) == pytest.approx(1.0)
    step = Schedule(ScheduleConfig(name="step", warmup_steps=0, step_size=10, gamma=0.5), 1.0, 100)
    assert [step.lr(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    const = Schedule(ScheduleConfig(name="constant", warmup_steps=5), 3.0, 100)
    assert const.lr(50) == 3.0


def test_time_horizon_decays_over_the_budget_not_the_steps() -> None:
    cos = Schedule(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1, horizon="time"), 1.0, 10_000)
    assert cos.lr(5, time_fraction=0.9) == pytest.approx(0.6)  # warmup still counts steps
    assert cos.lr(20, time_fraction=0.5) == pytest.approx(0.55)  # half the budget: half-way down
    assert cos.lr(20, time_fraction=1.2) == pytest.approx(0.1)
    assert cos.lr(20) > 0.99  # by steps: barely started


def test_plateau_lowers_lr_after_patience_and_round_trips() -> None:
    sched = Schedule(ScheduleConfig(name="plateau", warmup_steps=0, patience=1, gamma=0.1), 1.0, 100)
    assert not sched.observe_val_loss(2.0)
    assert not sched.observe_val_loss(2.5)  # one bad evaluation: within patience
    assert sched.observe_val_loss(2.4)  # two: lowered
    assert sched.lr(50) == pytest.approx(0.1)
    again = Schedule(ScheduleConfig(name="plateau", warmup_steps=0), 1.0, 100)
    again.load_state_dict(sched.state_dict())
    assert again.lr(3) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_embeddings() -> None:
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        p.dim() == 2 and "wte" not in names[id(p)] and "wpe" not in names[id(p)] for p in decay["params"]
    )
    assert any("ln" in names[id(p)] or "norm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "rmsprop"])
def test_each_optimizer_reduces_loss(name: str) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    opt = build_optimizer(
        model, OptimConfig(name=name, lr=3e-3 if name != "sgd" else 0.1), torch.device("cpu")
    )
    x = torch.randint(0, 40, (4, 16))
    first = None
    for _ in range(8):
        _, loss = model(x, targets=x)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert loss.item() < first


def test_sampler_is_a_function_of_step_and_ranks_partition_the_batch(shards: Path) -> None:
    split = TokenSplit(read_meta(shards), "train")
    a = BatchSampler(split, 16, 8, seed=1, mode="random")
    b = BatchSampler(split, 16, 8, seed=1, mode="random")
    assert np.array_equal(a.offsets(7), b.offsets(7))
    assert not np.array_equal(a.offsets(7), a.offsets(8))
    full = torch.cat([x for x, _ in a.rank_micro_batches(3, 0, 1, 8)])
    parts = [x for r in range(2) for x, _ in a.rank_micro_batches(3, r, 2, 2)]
    assert torch.equal(full, torch.cat(parts))
    x, y = a.global_batch(3)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_sequential_sampling_walks_the_data_in_order(shards: Path) -> None:
    split = TokenSplit(read_meta(shards), "train")
    s = BatchSampler(split, 16, 4, seed=0, mode="sequential")
    assert list(s.offsets(0)) == [0, 16, 32, 48]
    assert list(s.offsets(1)) == [64, 80, 96, 112]
    n = s.num_windows
    seen = np.concatenate([s.offsets(i) for i in range(math.ceil(n / 4))])[:n]
    assert sorted(seen.tolist()) == [i * 16 for i in range(n)]  # one epoch = every window once


def test_eval_windows_are_fixed(shards: Path) -> None:
    split = TokenSplit(read_meta(shards), "val")
    assert np.array_equal(eval_offsets(split, 16, 10), eval_offsets(split, 16, 10))
    assert eval_offsets(split, 16, 10).max() + 17 <= split.num_tokens


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_checkpoint_ties_verifies_and_falls_back(tmp_path: Path) -> None:
    model = tiny_model()
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        ckpt.save_checkpoint(root, step, model.state_dict(), {"n_layer": 2}, {"step": step}, {"step": step})
    assert ckpt.read_pointer(root, "latest").name == "step-0000002"
    loaded = ckpt.load_model_state(root / "step-0000002")
    fresh = tiny_model()
    fresh.load_state_dict(loaded)
    assert fresh.lm_head.weight.data_ptr() == fresh.wte.weight.data_ptr()  # re-tied
    assert torch.equal(fresh.wte.weight, model.wte.weight)
    bad = root / "step-0000002" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert "checksum" in ckpt.verify(root / "step-0000002")
    assert ckpt.find_good_checkpoint(root).name == "step-0000001"
    ckpt.prune(root, keep_last=1)
    assert [p.name for p in ckpt.step_dirs(root)] == ["step-0000002"]


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    small = tiny_model().state_dict()
    other = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).state_dict()
    with pytest.raises(ckpt.CheckpointError, match="another architecture"):
        ckpt.check_shapes(tmp_path, small, other)


def test_param_groups_fallback_for_plain_modules() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 4


def test_weights_file_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """safetensors writes its metadata map in a random order per process; we sort the header, so equal
    weights give byte-equal files (the pipeline's cache compares sha256s)."""
    import subprocess
    import sys

    script = (
        "import sys, torch\nfrom pathlib import Path\nfrom lmforge.train.checkpoint import save_model_file\n"
        "w = torch.arange(12.0).reshape(4, 3)\n"
        "save_model_file({'wte.weight': w, 'lm_head.weight': w, 'b': torch.ones(5)}, Path(sys.argv[1]),"
        " {'m': '1', 'a': '2', 'z': '3'})\n"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", script, str(f)], check=True)
    assert len({f.read_bytes() for f in files}) == 1
    back = ckpt.load_model_file(files[0])
    assert torch.equal(back["lm_head.weight"], back["wte.weight"])
