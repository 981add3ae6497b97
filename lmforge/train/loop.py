"""The training loop, written out: plain functions over explicit components (no Trainer class).

`train(...)` runs optimizer steps until max_steps, max_seconds, early stopping or a non-finite loss;
each step accumulates gradients over micro-batches, clips, steps the optimizer. Every `log_every` steps
it logs, every `eval_every` it measures validation loss/perplexity and writes a sample, every
`save_every` (and at the end) it hands over to the `save` callback. Everything that decides what the
next step computes — step, RNG states, schedule, optimizer — is in the checkpoint, so a resumed run
continues bit for bit.

Recipes other than pretraining plug in through `Components`: the sampler's micro-batches may carry a
third item, a dict of extra keyword tensors for the model (`segment_ids`, `attention_mask`); `eval_fn`
replaces the token-window evaluation with the recipe's own metrics, and `select_metric` names the one
that decides the best checkpoint and early stopping (`val_loss` lower is better, anything else higher).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.train.data import BatchSampler, TokenSplit, eval_offsets, rank_slice
from lmforge.train.distributed import DistInfo, all_reduce_mean, maybe_no_sync
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import Schedule, set_lr

log = logging.getLogger("lmforge")


class NonFiniteLossError(LmforgeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Progress that a checkpoint must carry besides the model and optimizer."""

    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    evals_since_best: int = 0
    train_seconds: float = 0.0
    last_val: float | None = None
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "stop_reason"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on CUDA that supports it, else fp32. bf16 on CPU only when asked; fp16 with a GradScaler."""
    if requested == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    else:
        name = requested
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LmforgeError("train.precision=bf16 but this GPU does not support bfloat16; use fp16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise LmforgeError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name=name, device_type=device.type, scaler=scaler)


# A micro-batch: (inputs, targets) or (inputs, targets, extra keyword tensors for the model's forward).
MicroBatch = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


class StepSampler(Protocol):
    """What the loop needs from a sampler: each step's micro-batches, a pure function of the step."""

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch_size: int
                           ) -> Sequence[MicroBatch]: ...  # fmt: skip

    def epoch(self, step: int) -> float: ...

    def state_dict(self, step: int) -> dict[str, Any]: ...


LOWER_IS_BETTER = ("val_loss",)  # select metrics where lower is better; every other one is higher-better


@dataclass
class Components:
    """What the loop works on; built by a recipe (pretrain.py, finetune/recipe.py)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    sampler: BatchSampler | StepSampler
    val: TokenSplit | None  # the token-window evaluation's split; None when eval_fn is given
    device: torch.device
    precision: Precision
    dist: DistInfo
    micro_batch_size: int
    block_size: int
    metrics: MetricsLogger
    sample_fn: Callable[[nn.Module], str | None] | None = None
    save_fn: Callable[[TrainState, bool], None] | None = None
    # The recipe's evaluation: model -> metrics, with at least "val_loss" (default: token windows of `val`).
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None
    select_metric: str = "val_loss"  # the eval metric that picks the best checkpoint and drives early stopping
    save_on_improve: bool = False  # also save at every evaluation that improves select_metric (model selection)
    stage: str = "pretrain"  # the progress bar's label
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# RNG state (plain types and tensors only: train_state.pt is loaded with weights_only=True)
# ---------------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def training_state(c: Components, state: TrainState, model_state: dict[str, torch.Tensor],
                   optim_state: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Everything but the weights that an exact resume needs (train_state.pt), after checking the weights
    are finite: a checkpoint of NaN weights would look like a good one."""
    bad = next((k for k, v in model_state.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise NonFiniteLossError(f"weights became non-finite ({bad}) at step {state.step}; not saving")
    return {
        "version": 1,
        "state": state.to_dict(),
        "optimizer": optim_state,
        "schedule": c.schedule.state_dict(),
        "scaler": c.precision.scaler.state_dict() if c.precision.scaler is not None else None,
        "rng": rng_state(),
        "data": c.sampler.state_dict(state.step),
        "world_size": c.dist.world_size,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# One step, one evaluation
# ---------------------------------------------------------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text)


def train_step(c: Components, step: int, grad_clip: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward/backward over this rank's micro-batches of step `step`, then one optimizer step.

    Returns (mean loss over the micro-batches, gradient norm before clipping), as tensors (no sync).
    """
    micro = c.sampler.rank_micro_batches(step, c.dist.rank, c.dist.world_size, c.micro_batch_size)
    n = len(micro)
    loss_sum = torch.zeros((), device=c.device)
    scaler = c.precision.scaler
    for i, (x, y, *rest) in enumerate(micro):
        x, y = _to_device(x, c.device), _to_device(y, c.device)
        kwargs = {k: _to_device(v, c.device) for k, v in rest[0].items()} if rest else {}
        with maybe_no_sync(c.model, c.dist, last_micro_step=i == n - 1), c.precision.autocast():
            _, loss = c.model(x, targets=y, **kwargs)
            scaled = loss / n
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    grad_norm = None
    if scaler is not None:
        scaler.unscale_(c.optimizer)
    if grad_clip is not None and grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(c.model.parameters(), grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
    if scaler is not None:
        scaler.step(c.optimizer)
        scaler.update()
    else:
        c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    return loss_sum / n, grad_norm


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def evaluate(c: Components, num_windows: int) -> float:
    """Mean loss over `num_windows` fixed validation windows (split across ranks, same for every run)."""
    if c.val is None:
        raise LmforgeError("no validation split to evaluate (the recipe gave neither val nor eval_fn)")
    offsets = eval_offsets(c.val, c.block_size, num_windows)
    mine = offsets[rank_slice(num_windows, c.dist.rank, c.dist.world_size)]
    c.model.eval()
    total = torch.zeros((), device=c.device, dtype=torch.float64)
    for i in range(0, len(mine), c.micro_batch_size):
        rows = c.val.windows(mine[i : i + c.micro_batch_size], c.block_size + 1)
        x, y = _to_device(rows[:, :-1], c.device), _to_device(rows[:, 1:], c.device)
        with c.precision.autocast():
            _, loss = c.model(x, targets=y)
        total += loss.double() * x.shape[0]
    c.model.train()
    count = len(mine) * c.dist.world_size
    return float(all_reduce_mean(total, c.dist).item() * c.dist.world_size / count)


def eval_window_count(cfg: TrainConfig, world_size: int) -> int:
    """eval_batches global batches' worth of windows, rounded to a multiple of the world size."""
    n = max(1, cfg.eval_batches) * cfg.batch_size
    return max(world_size, n - n % world_size)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train(c: Components, cfg: TrainConfig, state: TrainState) -> TrainState:
    """Run optimizer steps from `state.step`; returns the final state (with `stop_reason`)."""
    if cfg.schedule.horizon == "time" and not cfg.max_seconds:
        raise ConfigError("train.schedule.horizon=time needs train.max_seconds (the budget the rate decays over)")
    tokens_per_step = cfg.batch_size * c.block_size
    check_every = 1 if c.device.type == "cpu" else max(1, cfg.log_every)
    num_eval_windows = eval_window_count(cfg, c.dist.world_size)
    bar = tqdm(
        total=cfg.max_steps, initial=state.step, desc=c.stage, unit="step",
        disable=not c.dist.is_main, dynamic_ncols=True, leave=True,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line now and then, not a flood
    )  # fmt: skip
    c.model.train()
    window_start, window_tokens = time.perf_counter(), 0
    last_good_step = state.step
    try:
        while state.step < cfg.max_steps:
            if cfg.max_seconds is not None and state.train_seconds >= cfg.max_seconds:
                state.stop_reason = "max_seconds"
                break
            t0 = time.perf_counter()
            lr = c.schedule.lr(state.step, _time_fraction(cfg, state))
            set_lr(c.optimizer, lr)
            loss, grad_norm = _guarded_step(c, state.step, cfg)
            state.step += 1
            state.tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            if state.step % check_every == 0 and not math.isfinite(float(loss)):
                _raise_non_finite(state.step, float(loss), last_good_step)
            state.train_seconds += time.perf_counter() - t0
            bar.update(1)

            final = state.step >= cfg.max_steps or (
                cfg.max_seconds is not None and state.train_seconds >= cfg.max_seconds
            )
            if state.step % cfg.log_every == 0 or final:
                # The loss of this step (not a window mean: a resumed run must log the same numbers).
                mean_loss = float(all_reduce_mean(loss, c.dist))
                if not math.isfinite(mean_loss):
                    _raise_non_finite(state.step, mean_loss, last_good_step)
                now = time.perf_counter()
                tok_s = window_tokens / max(1e-9, now - window_start)
                event = {
                    "event": "train", "step": state.step, "loss": mean_loss, "lr": lr,
                    "tokens": state.tokens_seen, "tok_per_s": round(tok_s, 1),
                    "epoch": round(c.sampler.epoch(state.step), 4), "seconds": round(state.train_seconds, 3),
                }  # fmt: skip
                if grad_norm is not None:
                    event["grad_norm"] = float(grad_norm)
                c.metrics.log(event)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                window_start, window_tokens = time.perf_counter(), 0

            improved = False
            if state.step % cfg.eval_every == 0 or final:
                improved = _evaluate_and_sample(c, cfg, state, num_eval_windows)
                window_start = time.perf_counter()  # evaluation time is not training throughput
                if (
                    cfg.early_stopping_patience is not None
                    and state.evals_since_best > cfg.early_stopping_patience
                ):
                    state.stop_reason = "early_stopping"
                    log.info(
                        "early stopping at step %d: no val improvement in %d evaluations (best %.4f at step %s)",
                        state.step, state.evals_since_best, state.best_val, state.best_step,
                    )  # fmt: skip
            if state.step % cfg.save_every == 0 or final or state.stop_reason or (improved and c.save_on_improve):
                if not math.isfinite(float(loss)):
                    _raise_non_finite(state.step, float(loss), last_good_step)
                if c.save_fn is not None:
                    c.save_fn(state, improved)
                last_good_step = state.step
                window_start = time.perf_counter()
            if state.stop_reason:
                break
        else:
            state.stop_reason = "max_steps"
    finally:
        bar.close()
    if state.stop_reason == "max_seconds" and c.save_fn is not None and state.step != last_good_step:
        c.save_fn(state, False)
    return state


def _time_fraction(cfg: TrainConfig, state: TrainState) -> float | None:
    if cfg.schedule.horizon != "time" or not cfg.max_seconds:
        return None
    return state.train_seconds / cfg.max_seconds


def _guarded_step(c: Components, step: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        return train_step(c, step, cfg.optim.grad_clip)
    except (RuntimeError, MemoryError) as exc:
        if _is_oom(exc):
            raise LmforgeError(
                f"batch of {c.micro_batch_size}×{c.block_size} does not fit in memory; "
                "lower train.micro_batch_size"
            ) from None
        raise


def _raise_non_finite(step: int, value: float, last_good_step: int) -> None:
    raise NonFiniteLossError(
        f"loss became {value} at step {step}; stopping (last good checkpoint: step {last_good_step}). "
        "Lower train.optim.lr or enable train.optim.grad_clip"
    )


def _evaluate_and_sample(c: Components, cfg: TrainConfig, state: TrainState, num_windows: int) -> bool:
    """Validation metrics, best/early-stopping bookkeeping on `select_metric`, a sample. True if it improved.

    `state.best_val` holds the best value of the select metric (val loss for pretraining)."""
    with _fork_rng(c.device):  # evaluation must not move the training RNG streams
        results = c.eval_fn(c.model) if c.eval_fn is not None else {"val_loss": evaluate(c, num_windows)}
    val_loss = results["val_loss"]
    if not math.isfinite(val_loss):
        raise NonFiniteLossError(f"validation loss became {val_loss} at step {state.step}; stopping")
    score = results[c.select_metric]
    if c.select_metric in LOWER_IS_BETTER:
        improved = score < state.best_val
    else:
        improved = state.best_step is None or score > state.best_val
    state.last_val = val_loss
    if improved:
        state.best_val, state.best_step, state.evals_since_best = score, state.step, 0
    else:
        state.evals_since_best += 1
    if c.schedule.observe_val_loss(val_loss):
        log.info("val loss plateaued: learning rate scale now %.3g", c.schedule.plateau_scale)
    ppl = math.exp(min(val_loss, 700.0))
    others = {k: v for k, v in results.items() if k != "val_loss"}
    c.metrics.log({"event": "eval", "step": state.step, "val_loss": val_loss, "val_ppl": ppl, **others,
                   "best_val": state.best_val})  # fmt: skip
    if c.dist.is_main:
        shown = "".join(f", {k} {v:.4f}" for k, v in others.items())
        tqdm.write(f"step {state.step}: val loss {val_loss:.4f}, perplexity {ppl:.2f}{shown}")
        log.debug("step %d: val loss %.4f, perplexity %.2f%s", state.step, val_loss, ppl, shown)
    if cfg.sample_every_eval and c.sample_fn is not None:
        with _fork_rng(c.device):
            text = c.sample_fn(c.model)
        if text is not None:
            c.metrics.log({"event": "sample", "step": state.step, "text": text})
            if c.dist.is_main:
                log.debug("sample at step %d: %r", state.step, text)
    c.metrics.plot()
    return improved


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda")
