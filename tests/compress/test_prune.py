"""`lmforge prune`: exact magnitude sparsity (global and per layer), structured pruning into physically smaller
matrices that compute what the original computes without the removed heads and channels, recovery
fine-tuning that keeps pruned weights at zero, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compress_helpers import QUICK_EVAL, error_line, report_of

from lmforge.cli import main
from lmforge.compress.prune import choose_kept, importance_scores, structured_prune
from lmforge.infer.load import load_model
from lmforge.model.gpt import GPT, GPTConfig

RECOVERY = ["train.batch_size=16", "train.eval_every=10", "train.eval_batches=2", "train.schedule.warmup_steps=2",
            "train.optim.lr=1e-3", "train.sample_every_eval=false", "train.log_every=10", "train.device=cpu"]  # fmt: skip


def block_weights(model: GPT) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear)}


def test_magnitude_global_sparsity_is_exact(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "global"
    assert main(["prune", str(teacher), "--sparsity", "0.6", "--out", str(out), *QUICK_EVAL]) == 0
    original, pruned = load_model(teacher).model, load_model(out).model
    before, after = block_weights(original), block_weights(pruned)
    total = sum(w.numel() for w in before.values())
    assert sum(int((w == 0).sum()) for w in before.values()) == 0
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.6 * total)
    # The kept weights are the largest ones, unchanged: every zeroed |w| <= every kept |w|.
    everything = torch.cat([w.flatten() for w in before.values()])
    kept_mask = torch.cat([(w != 0).flatten() for w in after.values()])
    assert everything[~kept_mask].abs().max() <= everything[kept_mask].abs().min()
    assert torch.equal(torch.cat([w.flatten() for w in after.values()])[kept_mask], everything[kept_mask])
    # One threshold for all: the layers end up unevenly sparse. Reported as measured.
    details = json.loads((out / "prune.json").read_text())
    assert details["sparsity"]["zeros"] == zeros and details["sparsity"]["weights"] == total
    assert len({round(v["sparsity"], 3) for v in details["sparsity"]["layers"].values()}) > 1
    report = report_of(out)
    assert report["details"]["sparsity"]["sparsity"] == pytest.approx(zeros / total)
    assert report["after"]["nonzero_parameters"] == report["before"]["nonzero_parameters"] - zeros
    # Embeddings, norms and the tied head are not targets: untouched.
    assert torch.equal(pruned.wte.weight, original.wte.weight)


def test_magnitude_per_layer_and_recovery_keep_zeros(teacher: Path, tmp_path: Path) -> None:
    plain, recovered = tmp_path / "plain", tmp_path / "recovered"
    common = ["--sparsity", "0.8", "--scope", "layer", *QUICK_EVAL]
    assert main(["prune", str(teacher), "--out", str(plain), *common]) == 0
    assert main(["prune", str(teacher), "--out", str(recovered), "--recovery-steps", "20", *common, *RECOVERY]) == 0
    for run in (plain, recovered):
        for name, w in block_weights(load_model(run).model).items():
            assert int((w == 0).sum()) == round(0.8 * w.numel()), name  # every matrix exactly, after training too
    assert report_of(recovered)["details"]["recovery"]["steps"] == 20
    assert (recovered / "checkpoints" / "step-0000020").is_dir()
    # Recovery repairs part of the damage.
    assert report_of(recovered)["after"]["val_loss"] < report_of(plain)["after"]["val_loss"]


def masked_original(model: GPT, kept_q: list[list[int]], kept_mlp: list[list[int]]) -> GPT:
    """The original model with the removed heads' output columns and channels' down columns zeroed: what
    the structurally pruned model must compute (the kv heads of GQA are all kept)."""
    hd = model.config.head_dim
    masked = GPT(model.config)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, heads, channels in zip(masked.blocks, kept_q, kept_mlp):
            for h in set(range(model.config.n_head)) - set(heads):
                block.attn.out.weight[:, h * hd : (h + 1) * hd] = 0
            drop = sorted(set(range(model.config.intermediate_size)) - set(channels))
            block.mlp.down.weight[:, drop] = 0
    return masked.eval()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_structured_pruning_is_the_original_minus_what_it_removed(flavour: str, shards: Path) -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=80, block_size=32, n_layer=2, n_head=8, n_kv_head=2 if flavour == "llama" else None,
                    n_embd=64, flavour=flavour)  # fmt: skip
    model = GPT(cfg).eval()
    batches = [torch.randint(0, 80, (4, 32)) for _ in range(2)]
    heads, channels = importance_scores(model, batches)
    kept_q, kept_kv, kept_mlp = choose_kept(cfg, heads, channels, heads=0.5, mlp=0.25)
    if flavour == "llama":  # GQA: 2 of the 4 query heads of each kv group, both kv heads kept
        assert all(sorted(h // 4 for h in q) == [0, 0, 1, 1] for q in kept_q) and kept_kv == [[0, 1], [0, 1]]
    pruned = structured_prune(model, kept_q, kept_kv, kept_mlp).eval()
    c = pruned.config
    assert (c.n_head, c.n_kv_head, c.head_dim) == (4, 2 if flavour == "llama" else 4, 8)
    assert c.intermediate_size == cfg.intermediate_size - round(0.25 * cfg.intermediate_size)
    assert pruned.blocks[0].attn.out.weight.shape == (64, 32)
    assert pruned.num_params() < model.num_params()
    x = torch.randint(0, 80, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x)[0], masked_original(model, kept_q, kept_mlp)(x)[0], atol=1e-5, rtol=1e-5)
        # The KV-cache decode path (generate) agrees with the full forward on the smaller shapes.
        cache = pruned.new_kv_cache(2, 32)
        step_logits = torch.cat([pruned(x[:, t : t + 1], kv_cache=cache)[0] for t in range(32)], dim=1)
        torch.testing.assert_close(step_logits, pruned(x)[0], atol=1e-4, rtol=1e-4)


def test_structured_cli_writes_a_smaller_checkpoint(teacher: Path, shards: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "structured"
    assert main(["prune", str(teacher), "--method", "structured", "--heads", "0.5", "--mlp", "0.5",
                 "--out", str(out), *QUICK_EVAL]) == 0  # fmt: skip
    assert "| parameters |" in capsys.readouterr().out
    loaded = load_model(out)
    saved = json.loads((out / "checkpoints" / "step-0000000" / "model_config.json").read_text())
    assert (saved["n_head"], saved["head_dim"], saved["intermediate_size"]) == (2, 16, 128)
    assert loaded.model.blocks[1].mlp.up.weight.shape == (128, 64)
    report = report_of(out)
    assert report["after"]["parameters"] == loaded.model.num_params() < report["before"]["parameters"]
    assert report["after"]["bytes_on_disk"] < report["before"]["bytes_on_disk"]
    assert report["after"]["perplexity"] is not None
    assert json.loads((out / "prune.json").read_text())["kept_heads"][0] == sorted(
        json.loads((out / "prune.json").read_text())["kept_heads"][0])
    # It generates like any checkpoint.
    assert main(["generate", str(out), "--prompt", "KING:", "generate.max_new_tokens=8", "generate.seed=0"]) == 0
    assert capsys.readouterr().out.startswith("KING:")
    assert np.isfinite(report["after"]["val_loss"])


def test_bad_inputs(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x")
    for sparsity in ("1.0", "-0.1"):
        line = error_line(capsys, ["prune", str(teacher), "--sparsity", sparsity, "--out", out])
        assert "compress.prune.sparsity must be in [0, 1)" in line
    line = error_line(capsys, ["prune", str(teacher), "--method", "lottery", "--out", out])
    assert "compress.prune.method" in line and "magnitude" in line
    line = error_line(capsys, ["prune", str(teacher), "--sparsity", "half", "--out", out])
    assert "compress.prune.sparsity" in line
    assert "removes nothing" in error_line(capsys, ["prune", str(teacher), "--method", "structured", "--out", out])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no usable checkpoint" in error_line(capsys, ["prune", str(empty), "--out", out])
    assert not (tmp_path / "x").exists()  # refused before a run directory was made
