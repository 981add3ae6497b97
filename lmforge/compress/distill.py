"""`lmforge distill`: knowledge distillation of a teacher into a (smaller) student, on pretraining's shards.

    loss = alpha * KL(teacher || student, both softmaxes at temperature T) * T^2 + (1 - alpha) * cross-entropy

The student is a new model shaped by the `model:` section (a preset and overrides, as for pretraining) or an
existing checkpoint (`compress.distill.student`, e.g. a pruned copy of the teacher); its vocabulary must be
the teacher's. Training is `lmforge/train/loop.py`'s loop, composed here like pretrain.py composes it: the
same batches (a pure function of seed and step), schedules, clipping, accumulation, evaluation, atomic
checksummed checkpoints and exact `--resume`. The loop sees a `DistillModel` whose forward returns the
student's logits and the distillation loss; optimizer, checkpoints and samples see only the student, so
`<run>/checkpoints/step-N/` is an ordinary checkpoint that `load_model` and `train.init_from` take.

The teacher's logits are computed on the fly (a frozen forward per micro-batch), or with
`compress.distill.cache_teacher=true` once for every step's batch into a float16 memmap
(`<run>/teacher_cache/`, keyed by the teacher's weights, the shards, seed, batch and block size) that a
resumed run or another run with other alpha/T reuses.

`train_student` is also pruning's recovery fine-tuning (no teacher, or the unpruned model as teacher, and
masks that keep pruned weights at zero after every optimizer step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.compress.compare import (
    build_report,
    check_shards_fit,
    kl_divergence,
    measure,
    resolve_shards,
    teacher_kl,
    val_split,
    window_length,
    write_report,
)
from lmforge.config import Config, DistillConfig
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.runs import atomic_write_json, default_run_dir, start_run
from lmforge.train import checkpoint as ckpt
from lmforge.train.data import BatchSampler, ShardMeta, TokenSplit, check_split_length, rank_slice
from lmforge.train.distributed import DistInfo, full_optimizer_state, pick_device
from lmforge.train.loop import (
    Components,
    NonFiniteLossError,
    TrainState,
    eval_window_count,
    resolve_precision,
    rng_state,
    seed_everything,
    train,
)
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import Schedule, build_optimizer
from lmforge.train.pretrain import (
    batch_sizes,
    configure_torch,
    find_resume_checkpoint,
    make_sampler_fn,
    restore_train_state,
)

log = logging.getLogger("lmforge")

CACHE_DIR = "teacher_cache"

# ---------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------


class DistillModel(nn.Module):
    """What the training loop calls: the student's logits and alpha * KL * T^2 + (1 - alpha) * CE.

    The teacher is frozen and stays in eval mode whatever mode the wrapper is put in; its logits come from a
    forward pass, or from the batch (`teacher_logits`, a cache). alpha 0 (or no teacher) is plain CE."""

    def __init__(self, student: GPT, teacher: GPT | None, alpha: float, temperature: float) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.alpha, self.temperature = alpha, temperature

    def train(self, mode: bool = True) -> DistillModel:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        logits, ce = self.student(idx, targets=targets)
        if targets is None or ce is None or self.alpha == 0:
            return logits, ce
        if teacher_logits is None:
            if self.teacher is None:
                raise LmforgeError("distillation with alpha > 0 needs a teacher or cached teacher logits")
            with torch.no_grad():
                teacher_logits = self.teacher(idx)[0]
        kl = kl_divergence(logits, teacher_logits, self.temperature) * self.temperature**2
        return logits, self.alpha * kl + (1 - self.alpha) * ce


# ---------------------------------------------------------------------------------------------------------
# The teacher's logits on disk
# ---------------------------------------------------------------------------------------------------------


class TeacherCache:
    """The teacher's logits of every step's global batch: one float16 memmap (steps, batch, block, vocab)
    plus cache.json (what they were computed from, and how many steps are filled, so a fill resumes)."""

    def __init__(self, directory: Path, key: dict[str, Any], steps: int, shape: tuple[int, int, int]) -> None:
        self.dir, self.key, self.steps, self.shape = directory, key, steps, shape
        self.file = directory / "logits.f16"
        self.meta_file = directory / "cache.json"
        self.filled = 0
        recorded = self._recorded()
        if recorded is not None and recorded.get("key") == key and recorded.get("steps", 0) >= steps:
            self.steps, self.filled = recorded["steps"], int(recorded.get("filled", 0))
            log.info("distill: reusing cached teacher logits in %s (%d of %d steps filled)", directory,
                     self.filled, self.steps)  # fmt: skip
            mode = "r+"
        else:
            if recorded is not None:
                log.info("distill: the teacher cache in %s does not cover this run (another teacher, data or batches, "
                         "or fewer steps); rebuilding it", directory)  # fmt: skip
            directory.mkdir(parents=True, exist_ok=True)
            mode = "w+"
        self.logits = np.memmap(self.file, dtype=np.float16, mode=mode, shape=(self.steps, *shape))
        if mode == "w+":
            self._write_meta()

    def _recorded(self) -> dict[str, Any] | None:
        if not (self.meta_file.is_file() and self.file.is_file()):
            return None
        try:
            return json.loads(self.meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def _write_meta(self) -> None:
        atomic_write_json(self.meta_file, {"key": self.key, "steps": self.steps, "filled": self.filled,
                                           "shape": list(self.shape), "dtype": "float16"})  # fmt: skip

    @torch.no_grad()
    def fill(self, teacher: GPT, sampler: BatchSampler, device: torch.device, micro_batch_size: int) -> None:
        """Compute the missing steps' logits (the data a step sees is a pure function of the step)."""
        if self.filled >= self.steps:
            return
        log.info("distill: caching the teacher's logits for steps %d..%d", self.filled, self.steps - 1)
        teacher.eval()
        for step in range(self.filled, self.steps):
            x, _ = sampler.global_batch(step)
            for i in range(0, x.size(0), micro_batch_size):
                part = teacher(x[i : i + micro_batch_size].to(device))[0]
                self.logits[step, i : i + micro_batch_size] = part.float().cpu().numpy().astype(np.float16)
            self.filled = step + 1
            if self.filled % 50 == 0 or self.filled == self.steps:
                self.logits.flush()
                self._write_meta()

    def read(self, step: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.logits[step], dtype=np.float32))


class CachedTeacherSampler:
    """BatchSampler's micro-batches with the cached teacher logits as a keyword for DistillModel."""

    def __init__(self, base: BatchSampler, cache: TeacherCache) -> None:
        self.base, self.cache = base, cache

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch_size: int
                           ) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:  # fmt: skip
        x, y = self.base.global_batch(step)
        logits = self.cache.read(step)
        part = rank_slice(self.base.batch_size, rank, world_size)
        x, y, logits = x[part], y[part], logits[part]
        return [
            (x[i : i + micro_batch_size], y[i : i + micro_batch_size],
             {"teacher_logits": logits[i : i + micro_batch_size]})
            for i in range(0, x.size(0), micro_batch_size)
        ]  # fmt: skip

    def epoch(self, step: int) -> float:
        return self.base.epoch(step)

    def state_dict(self, step: int) -> dict[str, Any]:
        return self.base.state_dict(step)


def cache_key(teacher_source: Path, meta: ShardMeta, seed: int, batch_size: int, block: int, vocab: int,
              sampling: str) -> dict[str, Any]:  # fmt: skip
    """What the cached logits depend on: the teacher's weights, the training shards, and the batches."""
    from lmforge.model.lora import weights_sha256

    train_files = meta.splits.get("train", {}).get("files", [])
    data = hashlib.sha256(json.dumps(train_files, sort_keys=True).encode()).hexdigest()
    return {"teacher_sha256": weights_sha256(teacher_source), "train_split": data,
            "tokenizer_sha256": meta.tokenizer_sha256, "seed": seed, "batch_size": batch_size,
            "block_size": block, "vocab_size": vocab, "sampling": sampling}  # fmt: skip


@dataclass
class CacheSpec:
    directory: Path
    key: dict[str, Any]
    max_gb: float


# ---------------------------------------------------------------------------------------------------------
# Training a student (distillation, and pruning's recovery)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class StudentTraining:
    """One run of the loop over a student: what distill and prune's recovery share."""

    stage: str  # "distill" or "prune": the progress bar, info.json's stage
    student: GPT
    teacher: GPT | None
    alpha: float
    temperature: float
    meta: ShardMeta
    run_dir: Path
    max_steps: int
    resume_from: Path | None = None
    tokenizer_file: Path | None = None
    eos_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # more info.json keys (the teacher, the pruning)
    masks: dict[str, torch.Tensor] | None = None  # parameter name -> bool mask of weights kept non-zero
    cache: CacheSpec | None = None


def train_student(cfg: Config, job: StudentTraining, device: torch.device) -> dict[str, Any]:
    """Run the training loop on job.student; returns a summary (steps, losses, the last checkpoint)."""
    tcfg = dataclasses.replace(cfg.train, max_steps=job.max_steps)
    dist = DistInfo()
    student = job.student.to(device)
    teacher = job.teacher.to(device) if job.teacher is not None and job.alpha > 0 else None
    block = student.config.block_size
    train_split, val = TokenSplit(job.meta, "train"), TokenSplit(job.meta, "val")
    check_split_length(train_split, block)
    check_split_length(val, block)
    _, micro = batch_sizes(tcfg, 1)
    precision = resolve_precision(tcfg.precision, device)
    sampler: Any = BatchSampler(train_split, block, tcfg.batch_size, cfg.run.seed, tcfg.sampling)
    if job.cache is not None and teacher is not None:
        need_gb = tcfg.max_steps * tcfg.batch_size * block * student.config.vocab_size * 2 / 1e9
        if need_gb > job.cache.max_gb:
            raise ConfigError(f"the teacher cache would take {need_gb:.1f} GB (> compress.distill.cache_max_gb="
                              f"{job.cache.max_gb}); lower train.max_steps or turn cache_teacher off")  # fmt: skip
        cache = TeacherCache(job.cache.directory, job.cache.key, tcfg.max_steps,
                             (tcfg.batch_size, block, student.config.vocab_size))  # fmt: skip
        cache.fill(teacher, sampler, device, micro)
        sampler = CachedTeacherSampler(sampler, cache)
    model = DistillModel(student, teacher, job.alpha, job.temperature)
    optimizer = build_optimizer(student, tcfg.optim, device)
    schedule = Schedule(tcfg.schedule, tcfg.optim.lr, tcfg.max_steps)
    state = TrainState()
    if job.resume_from is not None:
        state = restore_train_state(job.resume_from, student, optimizer, schedule, precision.scaler, dist)
    if job.masks:
        keep_pruned_at_zero(optimizer, student, job.masks)
    root = job.run_dir / "checkpoints"
    metrics = MetricsLogger(job.run_dir, enabled=True, resume_step=state.step if job.resume_from else None)
    windows = eval_window_count(tcfg, 1)

    def eval_fn(_model: nn.Module) -> dict[str, float]:
        from lmforge.compress.compare import val_loss

        results = {"val_loss": val_loss(student, val, block, windows, micro, device)}
        if teacher is not None:
            results["val_kl"] = teacher_kl(student, teacher, val, block, windows, micro, device)
        return results

    base_sample = make_sampler_fn(job.meta, tcfg, dist, device)
    components = Components(
        model=model, optimizer=optimizer, schedule=schedule, sampler=sampler, val=None, device=device,
        precision=precision, dist=dist, micro_batch_size=micro, block_size=block, metrics=metrics,
        sample_fn=lambda _m: base_sample(student), eval_fn=eval_fn, stage=job.stage,
    )  # fmt: skip
    components.save_fn = make_student_save_fn(job, root, optimizer, schedule, precision, sampler, tcfg.keep_last)
    log.info("%s: %s student parameters, %s, %s; %d steps of %d x %d tokens%s", job.stage,
             f"{student.num_params():,}", device, precision.name, tcfg.max_steps, tcfg.batch_size, block,
             f" (resuming at step {state.step})" if state.step else "")  # fmt: skip
    try:
        state = train(components, tcfg, state)
    finally:
        metrics.close()
    latest = ckpt.read_pointer(root, "latest")
    return {
        "steps": state.step,
        "val_loss": state.last_val,
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "stop_reason": state.stop_reason,
        "train_seconds": round(state.train_seconds, 3),
        "checkpoint": str(latest) if latest else None,
    }


def keep_pruned_at_zero(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """After every optimizer step, zero the pruned weights again (gradients and weight decay move them)."""
    params = dict(model.named_parameters())
    pairs = [(params[name], mask.to(params[name].device)) for name, mask in masks.items()]

    @torch.no_grad()
    def reapply(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        for p, mask in pairs:
            p.mul_(mask)

    optimizer.register_step_post_hook(reapply)


def make_student_save_fn(job: StudentTraining, root: Path, optimizer: torch.optim.Optimizer, schedule: Schedule,
                         precision: Any, sampler: Any, keep_last: int) -> Callable[[TrainState, bool], None]:  # fmt: skip
    """A checkpoint writer for the student alone: an ordinary lmforge checkpoint."""

    def save(state: TrainState, improved: bool) -> None:
        model_state = {k: v.detach().cpu() for k, v in job.student.state_dict().items()}
        bad = next((k for k, v in model_state.items() if not torch.isfinite(v).all()), None)
        if bad is not None:
            raise NonFiniteLossError(f"weights became non-finite ({bad}) at step {state.step}; not saving")
        train_state = {
            "version": 1,
            "state": state.to_dict(),
            "optimizer": full_optimizer_state(job.student, optimizer, DistInfo()),
            "schedule": schedule.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "rng": rng_state(),
            "data": sampler.state_dict(state.step),
            "world_size": 1,
        }
        info = {
            "stage": job.stage, "step": state.step, "tokens_seen": state.tokens_seen, "val_loss": state.last_val,
            "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
            "tokenizer_sha256": job.meta.tokenizer_sha256, "vocab_size": job.meta.vocab_size,
            "eos_id": job.eos_id, "data": str(job.meta.dir), **job.info,
        }  # fmt: skip
        path = ckpt.save_checkpoint(root, state.step, model_state, job.student.config.to_dict(), train_state, info,
                                    job.tokenizer_file)  # fmt: skip
        if improved:
            ckpt.write_best(root, path)
        ckpt.prune(root, keep_last)

    return save


def tokenizer_file_of(source: Path, meta: ShardMeta | None) -> Path | None:
    """The tokenizer a new checkpoint should carry: the model's own (its config sits beside it), else the
    shards'."""
    if (source / "tokenizer.json").is_file():
        return source / "tokenizer.json"
    return meta.tokenizer_path if meta is not None else None


def load_float_model(path: str, role: str) -> Any:
    """A model to compress or learn from, as float weights (a LoRA adapter merged into its base)."""
    from lmforge.compress.quantize import find_quantized_dir
    from lmforge.infer.load import load_model

    if not Path(path).exists():
        raise LmforgeError(f"no such model: {path} ({role})")
    if find_quantized_dir(Path(path)) is not None:
        raise LmforgeError(f"{path} is a quantized model; {role} must be a float model (the one it came from)")
    loaded = load_model(path)
    if loaded.kind == "lora":
        from lmforge.model.lora import merge_lora

        merge_lora(loaded.model)
    return loaded


def check_same_tokenizer(source: Path, meta: ShardMeta, role: str) -> None:
    """Refuse shards made by another tokenizer than the model's (when both record one)."""
    recorded = ckpt.read_json(source, "info.json").get("tokenizer_sha256") if source.is_dir() else None
    if recorded and meta.tokenizer_sha256 and recorded != meta.tokenizer_sha256:
        raise DataError(f"{meta.dir}: shards were made by tokenizer {meta.tokenizer_sha256[:12]}…, but the {role} "
                        f"{source} was trained with tokenizer {recorded[:12]}…")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# `lmforge distill`
# ---------------------------------------------------------------------------------------------------------


def check_distill_config(dc: DistillConfig) -> None:
    if not dc.teacher:
        raise ConfigError("no teacher given: lmforge distill SHARDS --teacher MODEL (compress.distill.teacher)")
    if not 0.0 <= dc.alpha <= 1.0:
        raise ConfigError(f"compress.distill.alpha must be in [0, 1], got {dc.alpha}")
    if dc.temperature <= 0:
        raise ConfigError(f"compress.distill.temperature must be positive, got {dc.temperature}")
    if dc.cache_max_gb <= 0:
        raise ConfigError(f"compress.distill.cache_max_gb must be positive, got {dc.cache_max_gb}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LmforgeError("distill runs in one process: start it without torchrun")


def build_student(cfg: Config, teacher: GPT, resume_from: Path | None) -> GPT:
    """The student: from the checkpoint being resumed, from compress.distill.student, or new from `model:`."""
    dc = cfg.compress.distill
    if resume_from is not None:
        student = GPT(GPTConfig.from_dict(ckpt.read_json(resume_from, "model_config.json")))
        state = ckpt.load_model_state(resume_from)
        ckpt.check_shapes(resume_from, state, student.state_dict())
        student.load_state_dict(state)
        return student
    if dc.student:
        student = load_float_model(dc.student, "the student").model
        student.requires_grad_(True)
    else:
        student = GPT(GPTConfig.from_model_config(cfg.model, vocab_size=teacher.config.vocab_size))
    source = f"compress.distill.student={dc.student}" if dc.student else "model.vocab_size"
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ConfigError(
            f"teacher/student vocabulary mismatch: the teacher has {teacher.config.vocab_size} tokens, the student "
            f"{student.config.vocab_size} ({source}); distillation compares their next-token distributions"
        )
    if student.config.block_size > teacher.config.block_size:
        raise ConfigError(f"the student's block_size {student.config.block_size} exceeds the teacher's "
                          f"{teacher.config.block_size}: the teacher cannot score those windows")  # fmt: skip
    return student


def run_distill(cfg: Config, out: str | Path | None = None) -> dict[str, Any]:
    """Distil compress.distill.teacher into a student on the shards; returns the report."""
    dc, ec = cfg.compress.distill, cfg.compress.eval
    check_distill_config(dc)
    teacher_loaded = load_float_model(dc.teacher, "the teacher")  # type: ignore[arg-type]
    teacher: GPT = teacher_loaded.model
    teacher_dir = teacher_loaded.source
    meta = resolve_shards(cfg.compress.data, teacher_dir)
    if meta is None:
        raise DataError("no token shards: lmforge distill SHARDS --teacher MODEL (compress.data)")
    check_shards_fit(meta, teacher.config.vocab_size, f"the teacher {dc.teacher}")
    check_same_tokenizer(teacher_dir, meta, "teacher")
    device = pick_device(cfg.train.device)
    configure_torch(cfg.train, cfg.run.seed, device)
    run_dir = Path(out) if out is not None else default_run_dir(cfg, "distill")
    resume_from = find_resume_checkpoint(run_dir / "checkpoints", cfg.train.resume)
    seed_everything(cfg.run.seed)
    student = build_student(cfg, teacher, resume_from)
    split = val_split(meta)
    length = window_length(split, teacher, student) if split is not None else None

    with start_run("distill", cfg, run_dir) as run:
        run.add_inputs([meta.dir, *[f for f in teacher_dir.iterdir() if f.is_file()]])
        before = measure(teacher, teacher_dir, split, ec, device, length)
        cache = None
        if dc.cache_teacher:
            directory = Path(dc.cache_dir) if dc.cache_dir else run.dir / CACHE_DIR
            key = cache_key(teacher_dir, meta, cfg.run.seed, cfg.train.batch_size, student.config.block_size,
                            student.config.vocab_size, cfg.train.sampling)  # fmt: skip
            cache = CacheSpec(directory, key, dc.cache_max_gb)
        job = StudentTraining(
            stage="distill", student=student, teacher=teacher, alpha=dc.alpha, temperature=dc.temperature,
            meta=meta, run_dir=run.dir, max_steps=cfg.train.max_steps, resume_from=resume_from,
            tokenizer_file=tokenizer_file_of(teacher_dir, meta), eos_id=teacher_loaded.eos_id,
            info={"teacher": str(teacher_dir), "alpha": dc.alpha, "temperature": dc.temperature}, cache=cache,
        )  # fmt: skip
        summary = train_student(cfg, job, device)
        if summary["checkpoint"] is None:
            raise LmforgeError("distill: no checkpoint was written (train.max_steps=0?)")
        checkpoint = Path(summary["checkpoint"])
        after = measure(student.eval(), checkpoint, split, ec, device, length)
        if split is not None and ec.windows > 0 and length is not None:
            after["teacher_kl"] = teacher_kl(student, teacher, split, length, ec.windows, ec.batch_size, device)
        details = {"alpha": dc.alpha, "temperature": dc.temperature, "teacher_cache": str(cache.directory) if cache
                   else None, "student_config": student.config.to_dict(), "training": summary}  # fmt: skip
        report = build_report("distill", f"alpha={dc.alpha} T={dc.temperature}", str(dc.teacher), str(checkpoint),
                              before, after, details)  # fmt: skip
        write_report(run, report)
        run.add_output(checkpoint)
        run.extra["summary"] = summary
    return report
