"""`lmforge pretrain`: the pretraining recipe, composed from data, optim, checkpoint, distributed, loop.

Reads token shards, builds the GPT (or resumes / starts from a checkpoint), and runs the training loop,
writing `<run>/checkpoints/`, `metrics.jsonl`, `tb/` and `loss.png`. Under torchrun every rank runs this;
only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import Config, TrainConfig
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.runs import Run, default_run_dir, start_run
from lmforge.train import checkpoint as ckpt
from lmforge.train.data import BatchSampler, ShardMeta, TokenSplit, check_split_length, read_meta
from lmforge.train.distributed import (
    DistInfo,
    barrier,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_optimizer_state,
    shutdown,
    unwrap,
    wrap_model,
)
from lmforge.train.loop import (
    Components,
    NonFiniteLossError,
    TrainState,
    resolve_precision,
    seed_everything,
    set_rng_state,
    train,
    training_state,
)
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import Schedule, build_optimizer

log = logging.getLogger("lmforge")

# Keys of the model config that change the weights' shapes or meaning: a checkpoint must agree on them.
ARCH_KEYS = (
    "flavour", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
    "intermediate_size", "bias", "tie_embeddings",
)  # fmt: skip


def run_pretrain(cfg: Config) -> dict[str, Any]:
    """Train a GPT on the token shards in `cfg.train.data`; returns a summary of the run."""
    info, device = init_distributed(cfg.train.device, cfg.train.strategy)
    try:
        if info.is_main:
            with start_run("pretrain", cfg, cfg.train.out) as run:
                summary = _pretrain(cfg, info, device, run.dir, run)
                run.extra["summary"] = summary
                return summary
        run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg, "pretrain")
        return _pretrain(cfg, info, device, run_dir, None)
    finally:
        shutdown()


def _pretrain(cfg: Config, dist: DistInfo, device: torch.device, run_dir: Path, run: Run | None) -> dict:
    from lmforge.model.gpt import GPT, GPTConfig

    tcfg = cfg.train
    configure_torch(tcfg, cfg.run.seed, device)
    meta = read_meta(tcfg.data)
    gcfg = GPTConfig.from_model_config(cfg.model, vocab_size=meta.vocab_size)
    train_split, val_split = TokenSplit(meta, "train"), TokenSplit(meta, "val")
    check_data(meta, train_split, val_split, gcfg.vocab_size, gcfg.block_size)
    per_rank, micro = batch_sizes(tcfg, dist.world_size)
    precision = resolve_precision(tcfg.precision, device)
    check_fits_in_memory(gcfg, micro, device, precision.name, tcfg.activation_checkpointing)

    root = run_dir / "checkpoints"
    resume_from = find_resume_checkpoint(root, tcfg.resume)
    init_from = ckpt.resolve_checkpoint(tcfg.init_from) if tcfg.init_from and resume_from is None else None
    source = resume_from or init_from

    seed_everything(cfg.run.seed)
    model = GPT(gcfg)
    if source is not None:
        check_checkpoint_matches(source, gcfg.to_dict(), meta)
        state_dict = ckpt.load_model_state(source)
        ckpt.check_shapes(source, state_dict, model.state_dict())
        model.load_state_dict(state_dict)
        log.info("%s %s", "resuming from" if resume_from else "initialising from", source)
    if tcfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.to(device)
    model = wrap_model(model, dist, device)
    if tcfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    optimizer = build_optimizer(_optim_target(model, dist), tcfg.optim, device)
    schedule = Schedule(tcfg.schedule, tcfg.optim.lr, tcfg.max_steps)
    sampler = BatchSampler(train_split, gcfg.block_size, tcfg.batch_size, cfg.run.seed, tcfg.sampling)

    state = TrainState()
    if resume_from is not None:
        state = restore_train_state(resume_from, model, optimizer, schedule, precision.scaler, dist)
    metrics = MetricsLogger(run_dir, enabled=dist.is_main, resume_step=state.step if resume_from else None)

    n_params = unwrap(model).num_params() if hasattr(unwrap(model), "num_params") else 0
    if dist.is_main:
        log.info(
            "pretrain: %s parameters, %s on %s (%s, %d process%s), batch %d = %d×%d micro-batches×%d ranks, "
            "block %d, %s",
            f"{n_params:,}", gcfg.flavour, device, precision.name, dist.world_size,
            "es" if dist.world_size > 1 else "", tcfg.batch_size, micro, per_rank // micro, dist.world_size,
            gcfg.block_size, f"from step {state.step}" if state.step else "from scratch",
        )  # fmt: skip

    components = Components(
        model=model, optimizer=optimizer, schedule=schedule, sampler=sampler, val=val_split, device=device,
        precision=precision, dist=dist, micro_batch_size=micro, block_size=gcfg.block_size, metrics=metrics,
    )  # fmt: skip
    components.sample_fn = make_sampler_fn(meta, tcfg, dist, device)
    components.save_fn = make_save_fn(components, root, gcfg.to_dict(), meta, tcfg)
    try:
        state = train(components, tcfg, state)
    except NonFiniteLossError:
        metrics.plot()
        raise
    finally:
        metrics.close()

    latest = ckpt.read_pointer(root, "latest")
    best = ckpt.read_pointer(root, "best")
    summary = {
        "run_dir": str(run_dir),
        "steps": state.step,
        "tokens": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 3),
        "val_loss": state.last_val,
        "val_ppl": math.exp(state.last_val) if state.last_val is not None else None,
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "best_step": state.best_step,
        "stop_reason": state.stop_reason,
        "parameters": n_params,
        "checkpoint": str(latest) if latest else None,
        "best_checkpoint": str(best) if best else None,
    }
    if dist.is_main:
        metrics.plot()
        log.info(
            "pretrain finished (%s) at step %d: val loss %s; checkpoint %s",
            state.stop_reason, state.step,
            f"{state.last_val:.4f}" if state.last_val is not None else "n/a", summary["checkpoint"],
        )  # fmt: skip
        if run is not None:
            run.add_inputs([meta.dir])  # meta.json, tokenizer.json and every shard, with their sha256
            for name in ("metrics.jsonl", "loss.png"):
                if (run_dir / name).is_file():
                    run.add_output(run_dir / name)
            if latest is not None:
                run.add_output(latest)
    return summary


# ---------------------------------------------------------------------------------------------------------
# Setup and checks
# ---------------------------------------------------------------------------------------------------------


def configure_torch(tcfg: TrainConfig, seed: int, device: torch.device) -> None:
    if tcfg.threads is not None:
        torch.set_num_threads(tcfg.threads)
    if tcfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(seed)


def check_data(
    meta: ShardMeta, train_split: TokenSplit, val_split: TokenSplit, vocab: int, block: int
) -> None:
    if meta.vocab_size > vocab:
        raise DataError(
            f"{meta.dir}: shards come from a tokenizer with {meta.vocab_size} tokens, but the model's "
            f"vocabulary has {vocab} (model.vocab_size); they were made by a different tokenizer"
        )
    for split in (train_split, val_split):
        top = split.max_id()
        if top is not None and top >= vocab:
            raise DataError(
                f"{meta.dir}: the '{split.name}' split holds token id {top}, outside the model's vocabulary "
                f"of {vocab}: the shards come from a different tokenizer than the config names"
            )
        check_split_length(split, block)


def batch_sizes(tcfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(sequences per rank per step, sequences per forward pass)."""
    if tcfg.batch_size < 1 or tcfg.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={tcfg.batch_size} must be a positive multiple of the {world_size} processes"
        )
    per_rank = tcfg.batch_size // world_size
    micro = tcfg.micro_batch_size or per_rank
    if micro < 1 or per_rank % micro:
        raise ConfigError(
            f"train.micro_batch_size={micro} must divide the per-process batch "
            f"(train.batch_size / processes = {per_rank})"
        )
    return per_rank, micro


def memory_available(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_step_bytes(gcfg: Any, micro: int, precision: str, recompute: bool = False) -> int:
    """A lower bound of one micro-step's memory: kept activations, logits, weights and optimizer state.
    recompute: activation checkpointing (each block keeps only its input)."""
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    tokens = micro * gcfg.block_size
    per_token_layer = (gcfg.n_embd if recompute else 10 * gcfg.n_embd + 2 * gcfg.intermediate_size) * act_bytes
    per_token_head = gcfg.vocab_size * 4 * 2  # fp32 logits and their gradient
    n_params = gcfg.vocab_size * gcfg.n_embd + gcfg.n_layer * (
        4 * gcfg.n_embd**2 + 3 * gcfg.n_embd * gcfg.intermediate_size
    )
    return tokens * (gcfg.n_layer * per_token_layer + per_token_head) + n_params * 16


def check_fits_in_memory(gcfg: Any, micro: int, device: torch.device, precision: str,
                         recompute: bool = False) -> None:  # fmt: skip
    """Refuse before allocating when a micro-batch clearly cannot fit (the real OOM is caught too)."""
    need = estimate_step_bytes(gcfg, micro, precision, recompute)
    have = memory_available(device)
    if need > have:
        raise LmforgeError(
            f"batch of {micro}×{gcfg.block_size} does not fit in memory (needs at least "
            f"{need / 2**30:,.1f} GiB, {have / 2**30:,.1f} GiB available); lower train.micro_batch_size"
        )


def enable_activation_checkpointing(model: nn.Module) -> None:
    """train.activation_checkpointing: every lmforge GPT in `model` recomputes its blocks in the backward
    pass; a Hugging Face model (an encoder classifier's backbone) through its gradient_checkpointing_enable."""
    from lmforge.model.gpt import GPT

    found = False
    for module in model.modules():
        if isinstance(module, GPT):
            module.activation_checkpointing = found = True
        elif getattr(module, "supports_gradient_checkpointing", False):
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            found = True
    if not found:
        raise ConfigError("train.activation_checkpointing: this model has no blocks to recompute")


def find_resume_checkpoint(root: Path, resume: bool) -> Path | None:
    existing = ckpt.step_dirs(root)
    if not resume:
        if existing:
            raise LmforgeError(
                f"{root.parent} already holds checkpoints; pass --resume to continue it, or choose another --out"
            )
        return None
    found = ckpt.find_good_checkpoint(root)
    if found is None:
        if existing:
            raise ckpt.CheckpointError(f"no checkpoint under {root} passes its checksums; cannot resume")
        log.warning("--resume: no checkpoint under %s yet; starting from scratch", root)
    return found


def check_checkpoint_matches(source: Path, model_config: dict[str, Any], meta: ShardMeta) -> None:
    saved = ckpt.read_json(source, "model_config.json")
    for key in ARCH_KEYS:
        if key in saved and saved[key] != model_config.get(key):
            raise ckpt.CheckpointError(
                f"checkpoint {source} is of another architecture: {key}={saved[key]!r} there, "
                f"{model_config.get(key)!r} in the config"
            )
    recorded = ckpt.read_json(source, "info.json").get("tokenizer_sha256")
    if recorded and meta.tokenizer_sha256 and recorded != meta.tokenizer_sha256:
        raise DataError(
            f"{meta.dir}: shards were made by tokenizer {meta.tokenizer_sha256[:12]}…, but checkpoint {source} "
            f"was trained with tokenizer {recorded[:12]}…; re-encode the data with the checkpoint's tokenizer"
        )


def _optim_target(model: nn.Module, dist: DistInfo) -> nn.Module:
    inner = getattr(model, "_orig_mod", model)
    return inner if dist.strategy == "fsdp" else unwrap(model)


def restore_train_state(
    source: Path, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
    scaler: torch.amp.GradScaler | None, dist: DistInfo,
) -> TrainState:  # fmt: skip
    saved = ckpt.load_train_state(source)
    try:
        load_optimizer_state(_optim_target(model, dist), optimizer, saved["optimizer"], dist)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ckpt.CheckpointError(
            f"checkpoint {source}: optimizer state does not fit this model ({exc})"
        ) from None
    schedule.load_state_dict(saved["schedule"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    return TrainState.from_dict(saved["state"])


# ---------------------------------------------------------------------------------------------------------
# Callbacks handed to the loop
# ---------------------------------------------------------------------------------------------------------


def make_save_fn(c: Components, root: Path, model_config: dict[str, Any], meta: ShardMeta, tcfg: TrainConfig):
    """A checkpoint writer: every rank joins the gather (FSDP), rank 0 writes."""

    def save(state: TrainState, improved: bool) -> None:
        model_state = full_model_state(c.model, c.dist)
        optim_state = full_optimizer_state(_optim_target(c.model, c.dist), c.optimizer, c.dist)
        if c.dist.is_main:
            train_state = training_state(c, state, model_state, optim_state)
            info = {
                "stage": "pretrain",
                "step": state.step,
                "tokens_seen": state.tokens_seen,
                "val_loss": state.last_val,
                "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
                "tokenizer_sha256": meta.tokenizer_sha256,
                "vocab_size": meta.vocab_size,
                "eos_id": meta.eos_id,
                "data": str(meta.dir),
            }
            path = ckpt.save_checkpoint(root, state.step, model_state, model_config, train_state, info,
                                        meta.tokenizer_path)  # fmt: skip
            if improved:
                ckpt.write_best(root, path)
            ckpt.prune(root, tcfg.keep_last)
        barrier(c.dist)

    return save


def make_sampler_fn(meta: ShardMeta, tcfg: TrainConfig, dist: DistInfo, device: torch.device):
    """A function generating `sample_tokens` tokens from `sample_prompt`, decoded if tokenizer.json exists."""
    tokenizer = None
    if meta.tokenizer_path is not None:
        with contextlib.suppress(Exception):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(meta.tokenizer_path))
    prompt_ids: list[int] = []
    if tokenizer is not None and tcfg.sample_prompt:
        prompt_ids = tokenizer.encode(tcfg.sample_prompt, add_special_tokens=False).ids
    if not prompt_ids:
        prompt_ids = [meta.eos_id if meta.eos_id is not None else 0]

    def sample(model: nn.Module) -> str | None:
        if not dist.is_main and dist.strategy != "fsdp":
            return None  # FSDP needs every rank in each forward; otherwise rank 0 alone samples
        net = model if dist.strategy == "fsdp" else unwrap(model)
        idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        was_training = net.training
        net.eval()
        try:
            out = net.generate(idx, max_new_tokens=tcfg.sample_tokens, temperature=0.8, top_k=200)
        finally:
            net.train(was_training)
        ids = out[0].tolist()
        if tokenizer is None:
            return " ".join(map(str, ids))
        return tokenizer.decode(ids, skip_special_tokens=False)

    return sample
