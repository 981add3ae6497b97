"""`lmforge prune`: unstructured magnitude pruning, or structured removal of attention heads and MLP channels.

- `magnitude`: the `compress.prune.sparsity` share of the target Linear weights with the smallest |w| set to
  exactly zero (torch.nn.utils.prune's L1Unstructured, made permanent), over all targets at once (`global`:
  one threshold, layers end up unevenly sparse) or each matrix on its own (`layer`). The sparsity is
  measured afterwards by counting zeros, per layer and overall. The matrices keep their shape: the gain is
  for sparse kernels or compressed storage, not for dense inference.
- `structured`: every layer loses the `compress.prune.heads` share of its attention heads (with grouped-query
  attention: of the query heads of each kv group) and the `compress.prune.mlp` share of its MLP channels,
  the least important ones, scored on a few batches of training windows: a head by the mean norm of what it
  adds to the residual stream, a channel by its mean |activation| times the norm of its output column. The
  matrices are physically smaller; model_config.json says n_head, n_kv_head, head_dim, intermediate_size.

Then, with `compress.prune.recovery_steps`, the training loop fine-tunes the pruned model on the shards
(distillation's `train_student`; from the unpruned model as teacher when `recovery_alpha` > 0), pruned
weights kept at zero after every step. The result is an ordinary checkpoint in `<run>/checkpoints/`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.compress.compare import (
    build_report,
    check_shards_fit,
    measure,
    resolve_shards,
    val_split,
    write_report,
)
from lmforge.compress.distill import (
    StudentTraining,
    check_same_tokenizer,
    load_float_model,
    tokenizer_file_of,
    train_student,
)
from lmforge.config import Config, PruneConfig
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.runs import atomic_write_json, default_run_dir, start_run
from lmforge.train import checkpoint as ckpt
from lmforge.train.data import BatchSampler, TokenSplit
from lmforge.train.distributed import pick_device
from lmforge.train.loop import TrainState, seed_everything
from lmforge.train.pretrain import configure_torch, find_resume_checkpoint

log = logging.getLogger("lmforge")

PRUNE_FILE = "prune.json"  # what was pruned (kept heads and channels, sparsity), beside the checkpoints


# ---------------------------------------------------------------------------------------------------------
# Unstructured: magnitude
# ---------------------------------------------------------------------------------------------------------


def target_linears(model: nn.Module, patterns: list[str]) -> dict[str, nn.Linear]:
    """The Linear layers whose names match a pattern (fnmatch), never the output head tied to the embedding."""
    tied = getattr(model, "config", None) is not None and model.config.tie_embeddings  # type: ignore[union-attr]
    found = {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(fnmatch(name, p) for p in patterns)
        and not (tied and name == "lm_head")
    }  # fmt: skip
    if not found:
        raise ConfigError(f"compress.prune.targets={patterns} matches no Linear layer of the model")
    return found


def sparsity_report(layers: dict[str, nn.Linear]) -> dict[str, Any]:
    """Zeros counted in each target weight matrix and over all of them."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in layers.items():
        z, n = int((module.weight == 0).sum()), module.weight.numel()
        per_layer[name] = {"zeros": z, "weights": n, "sparsity": z / n}
        zeros, total = zeros + z, total + n
    return {"zeros": zeros, "weights": total, "sparsity": zeros / total if total else 0.0, "layers": per_layer}


@torch.no_grad()
def magnitude_prune(model: GPT, sparsity: float, scope: str, patterns: list[str]) -> dict[str, Any]:
    """Zero the `sparsity` share of the target weights with the smallest magnitude, in place."""
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"compress.prune.sparsity must be in [0, 1), got {sparsity}")
    layers = target_linears(model, patterns)
    params = [(module, "weight") for module in layers.values()]
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    elif scope == "layer":
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)
    else:
        raise ConfigError(f"compress.prune.scope must be 'global' or 'layer', got {scope!r}")
    for module, name in params:
        prune.remove(module, name)  # weight = weight_orig * mask, as a plain parameter again
    return sparsity_report(layers)


def zero_masks(model: nn.Module, patterns: list[str]) -> dict[str, Tensor]:
    """Parameter name -> mask of the non-zero weights of the targets (recovery keeps the zeros at zero)."""
    return {f"{name}.weight": module.weight != 0 for name, module in target_linears(model, patterns).items()}


# ---------------------------------------------------------------------------------------------------------
# Structured: heads and MLP channels
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def importance_scores(model: GPT, batches: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer: each attention head's mean norm of its contribution to the residual stream
    (its slice of the attention output times its columns of `out`), and each MLP channel's mean |activation|
    times the norm of its column of `down`; measured with forward hooks over `batches` of token windows."""
    cfg = model.config
    n_head, hd = cfg.n_head, cfg.head_dim
    heads = [torch.zeros(n_head) for _ in model.blocks]
    channels = [torch.zeros(cfg.intermediate_size) for _ in model.blocks]  # type: ignore[arg-type]
    tokens = [0]

    def head_hook(layer: int):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            y = inputs[0].reshape(-1, n_head, hd).float()  # (tokens, heads, hd)
            w = module.weight.float().view(module.weight.size(0), n_head, hd)  # (n_embd, heads, hd)
            for h in range(n_head):  # one head at a time: (tokens, n_embd) at most in memory
                contribution = y[:, h] @ w[:, h].T  # what head h adds to the residual stream
                heads[layer][h] += float(contribution.norm(dim=-1).sum())

        return hook

    def channel_hook(layer: int):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            h = inputs[0].reshape(-1, inputs[0].size(-1)).float()
            channels[layer] += (h.abs().sum(0) * module.weight.float().norm(dim=0)).cpu()

        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.attn.out.register_forward_pre_hook(head_hook(i)))
        handles.append(block.mlp.down.register_forward_pre_hook(channel_hook(i)))
    was_training = model.training
    model.eval()
    try:
        device = model.wte.weight.device
        for x in batches:
            model(x.to(device))
            tokens[0] += x.numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [h / tokens[0] for h in heads], [c / tokens[0] for c in channels]


def _top(scores: Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, in ascending index order (the layout stays the original's)."""
    return sorted(torch.topk(scores, keep).indices.tolist())


def choose_kept(cfg: GPTConfig, head_scores: list[Tensor], channel_scores: list[Tensor], heads: float,
                mlp: float) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:  # fmt: skip
    """Per layer: kept query heads, kept kv heads, kept MLP channels. Multi-head attention drops a head's
    query, key and value; grouped-query attention drops the same number of query heads from every kv group."""
    n_head, n_kv = cfg.n_head, cfg.n_kv_head
    assert n_kv is not None and cfg.intermediate_size is not None
    group = n_head // n_kv
    kept_q, kept_kv, kept_mlp = [], [], []
    width = cfg.intermediate_size - min(cfg.intermediate_size - 1, round(mlp * cfg.intermediate_size))
    for scores, ch_scores in zip(head_scores, channel_scores):
        if n_kv == n_head:
            q = _top(scores, n_head - min(n_head - 1, round(heads * n_head)))
            kv = q
        else:
            per_group = group - min(group - 1, round(heads * group))
            q = [g * group + i for g in range(n_kv) for i in _top(scores[g * group : (g + 1) * group], per_group)]
            kv = list(range(n_kv))
        kept_q.append(q)
        kept_kv.append(kv)
        kept_mlp.append(_top(ch_scores, width))
    return kept_q, kept_kv, kept_mlp


def _head_rows(heads: list[int], head_dim: int, offset: int = 0) -> Tensor:
    return torch.cat([torch.arange(offset + h * head_dim, offset + (h + 1) * head_dim) for h in heads])


@torch.no_grad()
def structured_prune(model: GPT, kept_q: list[list[int]], kept_kv: list[list[int]], kept_mlp: list[list[int]]
                     ) -> GPT:  # fmt: skip
    """A new, smaller GPT holding the kept heads and channels of `model` (every other weight copied)."""
    cfg = model.config
    hd, n_head, n_kv = cfg.head_dim, cfg.n_head, cfg.n_kv_head
    assert hd is not None and n_kv is not None
    new_cfg = dataclasses.replace(cfg, n_head=len(kept_q[0]), n_kv_head=len(kept_kv[0]), head_dim=hd,
                                  intermediate_size=len(kept_mlp[0]))  # fmt: skip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, (q, kv, channels) in enumerate(zip(kept_q, kept_kv, kept_mlp)):
        p = f"blocks.{i}."
        q_rows = _head_rows(q, hd)
        qkv_rows = torch.cat([q_rows, _head_rows(kv, hd, n_head * hd), _head_rows(kv, hd, (n_head + n_kv) * hd)])
        for name in ("attn.qkv.weight", "attn.qkv.bias"):
            if p + name in state:
                state[p + name] = state[p + name][qkv_rows]
        state[p + "attn.out.weight"] = state[p + "attn.out.weight"][:, q_rows]
        index = torch.tensor(channels)
        for name in ("mlp.up.weight", "mlp.up.bias", "mlp.gate.weight", "mlp.gate.bias"):
            if p + name in state:
                state[p + name] = state[p + name][index]
        state[p + "mlp.down.weight"] = state[p + "mlp.down.weight"][:, index]
    pruned = GPT(new_cfg)
    pruned.load_state_dict(state)  # strict: every tensor has found its new shape
    return pruned


def calibration_batches(meta_split: TokenSplit, block: int, batch_size: int, n: int, seed: int) -> list[Tensor]:
    sampler = BatchSampler(meta_split, block, batch_size, seed, "random")
    return [sampler.global_batch(step)[0] for step in range(n)]


# ---------------------------------------------------------------------------------------------------------
# `lmforge prune`
# ---------------------------------------------------------------------------------------------------------


def check_prune_config(pc: PruneConfig) -> None:
    if pc.method == "magnitude" and not 0.0 <= pc.sparsity < 1.0:
        raise ConfigError(f"compress.prune.sparsity must be in [0, 1), got {pc.sparsity}")
    for key in ("heads", "mlp"):
        if not 0.0 <= getattr(pc, key) < 1.0:
            raise ConfigError(f"compress.prune.{key} must be in [0, 1), got {getattr(pc, key)}")
    if pc.method == "structured" and pc.heads == 0 and pc.mlp == 0:
        raise ConfigError("structured pruning removes nothing: set compress.prune.heads and/or compress.prune.mlp")
    if pc.recovery_steps < 0:
        raise ConfigError(f"compress.prune.recovery_steps must be 0 or more, got {pc.recovery_steps}")
    if not 0.0 <= pc.recovery_alpha <= 1.0:
        raise ConfigError(f"compress.prune.recovery_alpha must be in [0, 1], got {pc.recovery_alpha}")
    if pc.calibration_batches < 1:
        raise ConfigError(f"compress.prune.calibration_batches must be at least 1, got {pc.calibration_batches}")


def prune_model(cfg: Config, model: GPT, train_split: TokenSplit | None) -> tuple[GPT, dict[str, Any]]:
    """The pruned copy of `model` and what was done (for prune.json and the report)."""
    pc = cfg.compress.prune
    if pc.method == "magnitude":
        pruned = copy.deepcopy(model)
        measured = magnitude_prune(pruned, pc.sparsity, pc.scope, pc.targets)
        log.info("prune: %s of %s target weights are zero (sparsity %.4f, %s)", f"{measured['zeros']:,}",
                 f"{measured['weights']:,}", measured["sparsity"], pc.scope)  # fmt: skip
        return pruned, {"method": "magnitude", "requested_sparsity": pc.sparsity, "scope": pc.scope,
                        "targets": pc.targets, "sparsity": measured}  # fmt: skip
    if train_split is None:
        raise DataError("structured pruning scores heads and channels on token shards: give compress.data")
    batches = calibration_batches(train_split, model.config.block_size, cfg.train.micro_batch_size or
                                  cfg.train.batch_size, pc.calibration_batches, cfg.run.seed)  # fmt: skip
    head_scores, channel_scores = importance_scores(model, batches)
    kept_q, kept_kv, kept_mlp = choose_kept(model.config, head_scores, channel_scores, pc.heads, pc.mlp)
    pruned = structured_prune(model, kept_q, kept_kv, kept_mlp)
    c0, c1 = model.config, pruned.config
    log.info("prune: heads %d -> %d (kv %d -> %d), MLP %d -> %d per layer; parameters %s -> %s",
             c0.n_head, c1.n_head, c0.n_kv_head, c1.n_kv_head, c0.intermediate_size, c1.intermediate_size,
             f"{model.num_params():,}", f"{pruned.num_params():,}")  # fmt: skip
    return pruned, {
        "method": "structured", "heads_fraction": pc.heads, "mlp_fraction": pc.mlp,
        "calibration_tokens": sum(b.numel() for b in batches),
        "n_head": [c0.n_head, c1.n_head], "n_kv_head": [c0.n_kv_head, c1.n_kv_head],
        "intermediate_size": [c0.intermediate_size, c1.intermediate_size],
        "kept_heads": kept_q, "kept_kv_heads": kept_kv, "kept_channels": kept_mlp,
    }  # fmt: skip


def run_prune(cfg: Config, out: str | Path | None = None) -> dict[str, Any]:
    """Prune compress.model (then recover, optionally); returns the report."""
    pc, ec = cfg.compress.prune, cfg.compress.eval
    check_prune_config(pc)
    if not cfg.compress.model:
        raise ConfigError("no model given: lmforge prune MODEL (a checkpoint, run or Hugging Face directory)")
    loaded = load_float_model(cfg.compress.model, "the model to prune")
    original: GPT = loaded.model
    source = loaded.source
    meta = resolve_shards(cfg.compress.data, source)
    if meta is not None:
        check_shards_fit(meta, original.config.vocab_size, f"model {cfg.compress.model}")
        check_same_tokenizer(source, meta, "model")
    if pc.recovery_steps > 0 and meta is None:
        raise DataError("recovery fine-tuning trains on token shards: give compress.data")
    device = pick_device(cfg.train.device)
    configure_torch(cfg.train, cfg.run.seed, device)
    run_dir = Path(out) if out is not None else default_run_dir(cfg, "prune")
    root = run_dir / "checkpoints"
    resume_from = find_resume_checkpoint(root, cfg.train.resume and pc.recovery_steps > 0)
    split = val_split(meta)
    train_split = TokenSplit(meta, "train") if meta is not None else None

    with start_run("prune", cfg, run_dir) as run:
        run.add_inputs([f for f in source.iterdir() if f.is_file()] + ([meta.dir] if meta is not None else []))
        before = measure(original, source, split, ec, device)
        seed_everything(cfg.run.seed)
        if resume_from is not None:  # pruned already: continue the recovery from its checkpoint
            pruned = GPT(GPTConfig.from_dict(ckpt.read_json(resume_from, "model_config.json")))
            pruned.load_state_dict(ckpt.load_model_state(resume_from))
            details = ckpt.read_json(run.dir, PRUNE_FILE)
        else:
            pruned, details = prune_model(cfg, original, train_split)
            atomic_write_json(run.path(PRUNE_FILE), details)
        masks = zero_masks(pruned, pc.targets) if pc.method == "magnitude" else None
        info = {"pruned_from": str(source), "prune": {k: v for k, v in details.items() if not k.startswith("kept")
                                                       and k != "sparsity"}}  # fmt: skip
        training = None
        if pc.recovery_steps > 0:
            assert meta is not None
            job = StudentTraining(
                stage="prune", student=pruned, teacher=original if pc.recovery_alpha > 0 else None,
                alpha=pc.recovery_alpha, temperature=cfg.compress.distill.temperature, meta=meta, run_dir=run.dir,
                max_steps=pc.recovery_steps, resume_from=resume_from, tokenizer_file=tokenizer_file_of(source, meta),
                eos_id=loaded.eos_id, info=info, masks=masks,
            )  # fmt: skip
            training = train_student(cfg, job, device)
            checkpoint = Path(training["checkpoint"])
        else:
            checkpoint = save_pruned(pruned, root, info, tokenizer_file_of(source, meta), loaded.eos_id, meta)
        pruned.eval()
        after = measure(pruned, checkpoint, split, ec, device)
        if pc.method == "magnitude":
            details["sparsity"] = sparsity_report(target_linears(pruned, pc.targets))  # measured on the result
            atomic_write_json(run.path(PRUNE_FILE), details)
        summary = {k: v for k, v in details.items() if not k.startswith("kept")}
        if training is not None:
            summary["recovery"] = {"steps": pc.recovery_steps, "alpha": pc.recovery_alpha, **training}
        if "sparsity" in summary:  # per-layer figures are in prune.json; the report keeps the totals
            summary["sparsity"] = {k: v for k, v in summary["sparsity"].items() if k != "layers"}
        report = build_report("prune", pc.method, str(cfg.compress.model), str(checkpoint), before, after, summary)
        write_report(run, report)
        run.add_output(run.path(PRUNE_FILE))
        run.add_output(checkpoint)
    return report


def save_pruned(model: GPT, root: Path, info: dict[str, Any], tokenizer_file: Path | None, eos_id: int | None,
                meta: Any) -> Path:  # fmt: skip
    """The pruned model as checkpoint step-0000000 (no optimizer state: nothing to resume)."""
    if ckpt.step_dirs(root):
        raise LmforgeError(f"{root} already holds checkpoints; choose another --out")
    full_info = {"stage": "prune", "step": 0, "eos_id": eos_id, **info}
    if meta is not None:
        full_info.update(tokenizer_sha256=meta.tokenizer_sha256, vocab_size=meta.vocab_size, data=str(meta.dir))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    train_state = {"version": 1, "state": TrainState().to_dict()}
    return ckpt.save_checkpoint(root, 0, state, model.config.to_dict(), train_state, full_info, tokenizer_file)
