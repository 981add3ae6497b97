"""Optimisers and learning-rate schedules.

Weight decay applies only to 2-D weights of linear layers; norms, biases and embeddings are not decayed
(the model's `configure_optimizer_groups` says which is which). Schedules are a plain function of the
step (linear warmup, then cosine / linear / constant / step decay), except `plateau`, which lowers the
rate when the validation loss stops improving; its state is a few plain numbers saved in checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmforge.config import OptimConfig, ScheduleConfig
from lmforge.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay 2-D Linear weights only; everything else (norms, biases, embeddings) is not decayed."""
    configure = getattr(model, "configure_optimizer_groups", None)
    if callable(configure):
        return configure(weight_decay)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_linear_weight = isinstance(module, nn.Linear) and name == "weight" and p.dim() == 2
            (decay if is_linear_weight else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name in ("adamw", "adam"):
        if len(cfg.betas) != 2:
            raise ConfigError(f"train.optim.betas needs two values, got {cfg.betas}")
        # Fused kernels exist for CUDA and (since torch 2.4) CPU: one kernel instead of one per tensor.
        fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
        betas = (float(cfg.betas[0]), float(cfg.betas[1]))
        if cfg.name == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **fast)
        # Adam's weight decay is L2 added to the gradient: keep the grouping, it still spares norms.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **fast)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps, foreach=True)
    raise ConfigError(f"unknown optimizer '{cfg.name}'")


class Schedule:
    """Learning rate as a function of the step, times a plateau factor driven by validation loss."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, max_steps: int) -> None:
        self.cfg = cfg
        self.base_lr = base_lr
        self.max_steps = max(1, max_steps)
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0

    def lr(self, step: int, time_fraction: float | None = None) -> float:
        """The rate for optimizer step `step` (0-based).

        `time_fraction` (elapsed / budget) replaces the step-based progress of the decay when the run is
        bounded by time (`schedule.horizon: time`): the rate then anneals by the end of the budget however
        many steps fit into it.
        """
        cfg = self.cfg
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return self.base_lr * (step + 1) / cfg.warmup_steps
        min_lr = self.base_lr * cfg.min_lr_ratio
        span = max(1, self.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if time_fraction is not None:
            progress = min(1.0, max(0.0, time_fraction))
        if cfg.name == "cosine":
            return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.base_lr - min_lr)
        if cfg.name == "linear":
            return self.base_lr + progress * (min_lr - self.base_lr)
        if cfg.name == "step":
            return self.base_lr * cfg.gamma ** ((step - cfg.warmup_steps) // max(1, cfg.step_size))
        if cfg.name == "plateau":
            return self.base_lr * self.plateau_scale
        return self.base_lr  # constant

    def observe_val_loss(self, val_loss: float) -> bool:
        """Feed an evaluation's loss; returns True when the plateau schedule lowered the rate."""
        if self.cfg.name != "plateau":
            return False
        if val_loss < self.plateau_best:
            self.plateau_best, self.plateau_bad = val_loss, 0
            return False
        self.plateau_bad += 1
        if self.plateau_bad > self.cfg.patience:
            self.plateau_scale *= self.cfg.gamma
            self.plateau_bad = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["scale"])
        self.plateau_best = float(state["best"])
        self.plateau_bad = int(state["bad"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
