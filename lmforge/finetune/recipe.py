"""`lmforge finetune`: the fine-tuning recipe, composed from the same parts as pretraining.

Loads the base model (a checkpoint, run directory or Hugging Face directory) and its tokenizer, turns the
records into examples (`sft.py`: chat-templated conversations with the prompt masked; `classify.py`: texts
and label indices), builds the model to train (the GPT itself, or a `ClassifierModel` around it; LoRA
adapters, or full fine-tuning with optional frozen layers) and runs `train/loop.py`'s loop over it: the
same schedules, clipping, accumulation, mixed precision, DDP/FSDP, early stopping and exact resume.

Checkpoints (`<run>/checkpoints/step-N/`) are ordinary lmforge checkpoints plus the task's files: an SFT
full fine-tune is loadable by `lmforge generate` / `chat` as it is; a LoRA checkpoint holds only
`adapter.safetensors` + `adapter_config.json` (its base named and hashed); a classifier adds
`classifier_head.safetensors` + `classifier_config.json`. `best` points at the best evaluation by
`finetune.select_metric` (macro-F1 for classification). The report is `<run>/finetune_report.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.config import Config, FinetuneConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.finetune import classify as cls
from lmforge.finetune import encoder as enc
from lmforge.finetune import sft
from lmforge.finetune.batching import RowSampler
from lmforge.finetune.records import load_splits
from lmforge.model.gpt import GPT
from lmforge.runs import Run, atomic_write_json, default_run_dir, start_run
from lmforge.train import checkpoint as ckpt
from lmforge.train.distributed import (
    DistInfo,
    barrier,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    shutdown,
    unwrap,
    wrap_model,
)
from lmforge.train.loop import (
    Components,
    NonFiniteLossError,
    TrainState,
    resolve_precision,
    train,
    training_state,
)
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import Schedule, build_optimizer
from lmforge.train.pretrain import (
    _optim_target,
    batch_sizes,
    check_fits_in_memory,
    configure_torch,
    enable_activation_checkpointing,
    find_resume_checkpoint,
    restore_train_state,
    seed_everything,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.infer.load import LoadedModel
    from lmforge.model.lora import BaseModelRef, LoraSpec

log = logging.getLogger("lmforge")

TOKENIZER_CONFIG = "tokenizer_config.json"


def run_finetune(cfg: Config) -> dict[str, Any]:
    """Fine-tune `cfg.finetune.base` on `cfg.finetune.data`; returns a summary of the run."""
    check_inputs(cfg.finetune)
    cfg.finetune.pooling = resolve_pooling(cfg.finetune)  # config.yaml records the pooling used
    info, device = init_distributed(cfg.train.device, cfg.train.strategy)
    try:
        if info.is_main:
            with start_run("finetune", cfg, cfg.train.out) as run:
                summary = _finetune(cfg, info, device, run.dir, run)
                run.extra["summary"] = summary
                return summary
        run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg, "finetune")
        return _finetune(cfg, info, device, run_dir, None)
    finally:
        shutdown()


def check_inputs(fcfg: FinetuneConfig) -> None:
    """The base and the data exist (one line each), before a run directory is made."""
    if not fcfg.base:
        raise ConfigError("no base model given (pass --base RUN_OR_CHECKPOINT, or set finetune.base)")
    if not Path(fcfg.base).exists():
        raise LmforgeError(f"base model not found: {fcfg.base} (finetune.base)")
    enc.check_hf_base(fcfg.base, fcfg.task)  # a Hugging Face base of an architecture this task cannot train
    if not fcfg.data:
        raise ConfigError("no fine-tuning data given (pass a data file or directory, or set finetune.data)")
    for key in ("data", "val_data"):
        value = getattr(fcfg, key)
        if value and not Path(value).exists():
            raise LmforgeError(f"no such file or directory: {value} (finetune.{key})")
    if fcfg.method == "lora" and fcfg.freeze:
        raise ConfigError("finetune.freeze is for method=full (LoRA trains the adapters only)")
    if fcfg.task == "sft" and fcfg.select_metric in ("macro_f1", "accuracy"):
        raise ConfigError(f"finetune.select_metric={fcfg.select_metric} needs task=classify")
    if fcfg.focal_gamma < 0:
        raise ConfigError(f"finetune.focal_gamma must be >= 0, got {fcfg.focal_gamma}")
    if fcfg.lm_loss_weight < 0:
        raise ConfigError(f"finetune.lm_loss_weight must be >= 0, got {fcfg.lm_loss_weight}")
    if fcfg.lm_loss_weight > 0 and (fcfg.task != "classify" or enc.is_encoder_dir(fcfg.base)):
        raise ConfigError("finetune.lm_loss_weight is for task=classify over a decoder (an LM head to train)")


def resolve_pooling(fcfg: FinetuneConfig) -> str:
    """finetune.pooling=auto: the last real token's state for a decoder, the mean over tokens for an encoder."""
    if fcfg.pooling != "auto":
        return fcfg.pooling
    return "mean" if enc.is_encoder_dir(fcfg.base) else "last"


# ---------------------------------------------------------------------------------------------------------
# The task's data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """What the recipe needs of a task: training rows, their collate, the evaluation, the report numbers."""

    rows: list[Any]
    collate: Callable[[list[Any]], Any]
    evaluate: Callable[[nn.Module, int, torch.device, Any], dict[str, Any]]  # model, batch, device, autocast
    stats: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    class_weights: list[float] | None = None
    sample_prompt: list[int] | None = None  # sft: the first validation prompt, for samples
    lengths: list[int] | None = None  # tokens of each row (finetune.group_by_length batches by them)


def special_id(tokenizer: Tokenizer, tok_cfg: dict[str, Any], key: str, fallback: str | None = None) -> int | None:
    token = tok_cfg.get(key)
    token = token.get("content") if isinstance(token, dict) else token
    for name in (token, fallback):
        if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
            return tokenizer.token_to_id(name)
    return None


def build_task_data(cfg: Config, base: LoadedModel | enc.EncoderBase, tokenizer: Tokenizer,
                    max_length: int) -> TaskData:  # fmt: skip
    fcfg, seed, skip = cfg.finetune, cfg.run.seed, cfg.run.on_error == "skip"
    train_records, val_records = load_splits(fcfg.data, fcfg.val_data, fcfg.val_fraction, seed)
    tok_cfg = base.tokenizer_config
    is_encoder = isinstance(base, enc.EncoderBase)  # texts get the encoder's own [CLS] ... [SEP], no EOS
    eos_id = None if is_encoder else special_id(tokenizer, tok_cfg, "eos_token", "<|endoftext|>")
    if eos_id is None:
        eos_id = base.eos_id
    pad_id = special_id(tokenizer, tok_cfg, "pad_token", "<|pad|>")
    pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)

    if fcfg.task == "sft":
        renderer = sft.ChatRenderer.for_tokenizer(tokenizer, tok_cfg)
        train_ex, train_stats = sft.build_sft_examples(train_records, fcfg, renderer, tokenizer, max_length, skip)
        val_ex, val_stats = sft.build_sft_examples(val_records, fcfg, renderer, tokenizer, max_length, skip)
        if not train_ex or not val_ex:
            raise LmforgeError(f"no {'training' if not train_ex else 'validation'} examples left after truncation "
                               f"to finetune.max_length={max_length}")  # fmt: skip
        rows = sft.make_rows(train_ex, fcfg.packing, max_length, seed)
        first = val_ex[0]
        prompt = first.ids[: next(i for i, t in enumerate(first.labels) if t != sft.IGNORE_INDEX)]
        return TaskData(
            rows=rows,
            collate=lambda batch: sft.collate(batch, pad_id, fcfg.packing),
            evaluate=lambda m, bs, dev, ac: sft.sft_val_loss(m, val_ex, pad_id, bs, dev, ac),
            stats={"train": train_stats.as_dict(), "val": val_stats.as_dict(), "rows": len(rows),
                   "packing": fcfg.packing, "max_length": max_length},
            sample_prompt=prompt,
            lengths=[row.length for row in rows],
        )

    labels = cls.label_set(train_records, fcfg.label_field, fcfg.labels)
    encode = enc.text_encoder(tokenizer, max_length) if is_encoder else None
    build = lambda records: cls.build_classify_examples(  # noqa: E731
        records, tokenizer, labels, fcfg.text_field, fcfg.label_field, max_length, eos_id, skip, encode)
    train_ex, train_stats = build(train_records)
    val_ex, val_stats = build(val_records)
    weights = cls.class_weights([e.label for e in train_ex], len(labels), fcfg.class_weights, labels)
    counts = [sum(1 for e in train_ex if e.label == i) for i in range(len(labels))]
    return TaskData(
        rows=train_ex,
        collate=lambda batch: cls.collate(batch, pad_id),
        evaluate=lambda m, bs, dev, ac: cls.classify_eval(m, val_ex, labels, pad_id, bs, dev, ac),
        stats={"train": train_stats, "val": val_stats, "label_counts": dict(zip(labels, counts)),
               "max_length": max_length, "eos_id": eos_id},
        labels=labels,
        class_weights=weights,
        lengths=[len(e.ids) for e in train_ex],
    )


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


def load_base(fcfg: FinetuneConfig) -> LoadedModel:
    from lmforge.infer.load import load_model
    from lmforge.model.lora import merge_lora

    base = load_model(fcfg.base)  # type: ignore[arg-type]
    if base.kind == "lora":
        if fcfg.method == "lora":
            raise LmforgeError(f"base {fcfg.base} is a LoRA adapter: merge it first (lmforge merge) to train "
                               "another adapter over it")  # fmt: skip
        merge_lora(base.model)
    if base.tokenizer is None:
        raise LmforgeError(f"base {fcfg.base} has no tokenizer.json: fine-tuning needs the base's tokenizer")
    base.model.train()
    return base


def build_model(base: GPT, cfg: Config, data: TaskData) -> tuple[nn.Module, LoraSpec | None]:
    """The module to train: the GPT (sft) or a ClassifierModel around it, with LoRA or frozen layers."""
    from lmforge.model.lora import LoraSpec, apply_lora, freeze, mark_only_lora_trainable

    fcfg = cfg.finetune
    spec = None
    if fcfg.method == "lora":
        spec = LoraSpec.from_config(cfg.lora)
        apply_lora(base, spec)
        mark_only_lora_trainable(base)
    elif fcfg.freeze:
        frozen = freeze(base, fcfg.freeze)
        log.info("froze %s parameters (finetune.freeze)", f"{frozen:,}")
    if fcfg.task == "sft":
        return base, spec
    if not base.config.tie_embeddings and fcfg.lm_loss_weight == 0:
        base.lm_head.weight.requires_grad_(False)  # unused by the classifier (and DDP wants every grad)
    model = cls.ClassifierModel(base, len(data.labels), fcfg.pooling, data.class_weights, fcfg.focal_gamma,
                                fcfg.lm_loss_weight)  # fmt: skip
    return model, spec


CLASSIFIERS = (cls.ClassifierModel, enc.EncoderClassifier)  # a backbone under a classification head


def backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, CLASSIFIERS) else model  # type: ignore[return-value]


def load_resume_weights(source: Path, model: nn.Module, method: str) -> None:
    """The trained weights of a fine-tuning checkpoint: the whole backbone (full) or the adapter (LoRA),
    and the classifier head."""
    from lmforge.model.lora import load_lora_state_dict, read_adapter

    net = backbone(model)
    if method == "lora":
        _, adapter_state = read_adapter(source)
        load_lora_state_dict(net, adapter_state)
    else:
        state = ckpt.load_model_state(source)
        ckpt.check_shapes(source, state, net.state_dict())
        net.load_state_dict(state)
    if isinstance(model, CLASSIFIERS):
        _, head_state = cls.read_head(source)
        model.head.load_state_dict(head_state)


def check_resumable(source: Path, fcfg: FinetuneConfig, labels: list[str]) -> None:
    saved = ckpt.read_json(source, "info.json").get("finetune", {})
    for key, now in (("task", fcfg.task), ("method", fcfg.method), ("labels", labels)):
        if key in saved and saved[key] != now:
            raise ckpt.CheckpointError(f"checkpoint {source} was fine-tuned with {key}={saved[key]!r}, "
                                       f"the config says {now!r}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def _finetune(cfg: Config, dist: DistInfo, device: torch.device, run_dir: Path, run: Run | None) -> dict:
    from lmforge.model.lora import BaseModelRef, count_parameters

    fcfg, tcfg = cfg.finetune, cfg.train
    configure_torch(tcfg, cfg.run.seed, device)
    # A BERT-family Hugging Face directory is an encoder (encoder.py); everything else loads as our GPT.
    is_encoder = fcfg.task == "classify" and enc.is_encoder_dir(fcfg.base)
    base = enc.load_encoder_base(fcfg.base) if is_encoder else load_base(fcfg)  # type: ignore[arg-type]
    tokenizer = base.tokenizer
    assert tokenizer is not None
    block_size = base.block_size if isinstance(base, enc.EncoderBase) else base.model.config.block_size
    model_config = base.model_config if isinstance(base, enc.EncoderBase) else base.model.config.to_dict()
    max_length = fcfg.max_length or block_size
    if not 2 <= max_length <= block_size:
        raise ConfigError(f"finetune.max_length={max_length} must be in [2, the base's block_size {block_size}]")
    data = build_task_data(cfg, base, tokenizer, max_length)
    select = fcfg.select_metric if fcfg.select_metric != "auto" else (
        "macro_f1" if fcfg.task == "classify" else "val_loss")  # fmt: skip
    _, micro = batch_sizes(tcfg, dist.world_size)
    precision = resolve_precision(tcfg.precision, device)
    if not isinstance(base, enc.EncoderBase):
        check_fits_in_memory(base.model.config, micro, device, precision.name, tcfg.activation_checkpointing)

    root = run_dir / "checkpoints"
    resume_from = find_resume_checkpoint(root, tcfg.resume)
    base_ref = BaseModelRef.of(base.source, model_config) if fcfg.method == "lora" else None
    if dist.is_main:
        tokenizer.save(str(run_dir / "tokenizer.json"))
        if base.tokenizer_config:
            atomic_write_json(run_dir / TOKENIZER_CONFIG, base.tokenizer_config)

    seed_everything(cfg.run.seed)
    if isinstance(base, enc.EncoderBase):
        model, spec = enc.build_encoder_classifier(base, cfg, len(data.labels), data.class_weights)
    else:
        model, spec = build_model(base.model, cfg, data)
    if resume_from is not None:
        check_resumable(resume_from, fcfg, data.labels)
        load_resume_weights(resume_from, model, fcfg.method)
        log.info("resuming from %s", resume_from)
    trainable, total = count_parameters(model)
    if tcfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.to(device)
    model = wrap_model(model, dist, device)
    if tcfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    optimizer = build_optimizer(_optim_target(model, dist), tcfg.optim, device)
    schedule = Schedule(tcfg.schedule, tcfg.optim.lr, tcfg.max_steps)
    sampler = RowSampler(data.rows, tcfg.batch_size, cfg.run.seed, data.collate,
                         lengths=data.lengths if cfg.finetune.group_by_length else None)

    state = TrainState()
    if resume_from is not None:
        state = restore_train_state(resume_from, model, optimizer, schedule, precision.scaler, dist)
    metrics = MetricsLogger(run_dir, enabled=dist.is_main, resume_step=state.step if resume_from else None)
    if dist.is_main:
        _log_start(fcfg, data, trainable, total, device, precision.name, state.step)

    details: dict[int, dict[str, Any]] = {}  # step -> the full evaluation (classification metrics)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        results = data.evaluate(m, micro, device, precision.autocast)
        if "details" in results:
            details[state.step] = results.pop("details")
        return results

    components = Components(
        model=model, optimizer=optimizer, schedule=schedule, sampler=sampler, val=None, device=device,
        precision=precision, dist=dist, micro_batch_size=micro, block_size=max_length, metrics=metrics,
        eval_fn=eval_fn, select_metric=select, save_on_improve=True, stage="finetune",
    )  # fmt: skip
    if fcfg.task == "sft" and data.sample_prompt and dist.strategy != "fsdp":
        components.sample_fn = make_sample_fn(tokenizer, data.sample_prompt, tcfg.sample_tokens, dist, device)
    writer = CheckpointWriter(components, root, cfg, data, model_config, spec, base_ref, run_dir)
    components.save_fn = writer.save
    try:
        state = train(components, tcfg, state)
    except NonFiniteLossError:
        metrics.plot()
        raise
    finally:
        metrics.close()

    latest, best = ckpt.read_pointer(root, "latest"), ckpt.read_pointer(root, "best")
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "task": fcfg.task,
        "method": fcfg.method,
        "base": str(base.source),
        "steps": state.step,
        "train_seconds": round(state.train_seconds, 3),
        "val_loss": state.last_val,
        "select_metric": select,
        "best": state.best_val if math.isfinite(state.best_val) else None,
        "best_step": state.best_step,
        "stop_reason": state.stop_reason,
        "trainable_parameters": trainable,
        "parameters": total,
        "data": data.stats,
        "checkpoint": str(latest) if latest else None,
        "best_checkpoint": str(best) if best else None,
    }
    if fcfg.task == "classify":
        summary["labels"] = data.labels
        summary["class_weights"] = data.class_weights
        last_eval = details.get(state.step)
        best_eval = details.get(state.best_step) if state.best_step is not None else None
        for name, found in (("last_eval", last_eval), ("best_eval", best_eval)):
            if found is not None:
                summary[name] = found
        if last_eval is not None:
            summary["accuracy"], summary["macro_f1"] = last_eval["accuracy"], last_eval["macro_f1"]
    if dist.is_main:
        metrics.plot()
        if fcfg.method == "lora" and (best or latest) is not None:
            summary["adapter"] = str(copy_adapter(best or latest, run_dir / "adapter"))  # type: ignore[arg-type]
        atomic_write_json(run_dir / "finetune_report.json", summary)
        shown = f"{select} {state.best_val:.4f} at step {state.best_step}" if state.best_step else "no evaluation"
        log.info("finetune finished (%s) at step %d: best %s; checkpoint %s", state.stop_reason, state.step,
                 shown, summary["best_checkpoint"] or summary["checkpoint"])  # fmt: skip
        if run is not None:
            run.add_inputs([p for p in (fcfg.data, fcfg.val_data) if p])
            for name in ("metrics.jsonl", "loss.png", "finetune_report.json"):
                if (run_dir / name).is_file():
                    run.add_output(run_dir / name)
            if latest is not None:
                run.add_output(latest)
    return summary


def _log_start(fcfg: FinetuneConfig, data: TaskData, trainable: int, total: int, device: torch.device,
               precision: str, step: int) -> None:  # fmt: skip
    train_stats = data.stats["train"]
    extra = f", {train_stats['dropped']} dropped: nothing left to learn" if train_stats.get("dropped") else ""
    if train_stats.get("skipped"):
        extra += f", {train_stats['skipped']} bad records skipped"
    log.info(
        "finetune %s (%s): %s of %s parameters trainable, on %s (%s), %s; %d training examples "
        "(%d truncated to %d tokens%s), %d validation examples%s",
        fcfg.task, fcfg.method, f"{trainable:,}", f"{total:,}", device, precision,
        f"from step {step}" if step else "from the base", train_stats["examples"], train_stats["truncated"],
        data.stats["max_length"], extra, data.stats["val"]["examples"],
        f"; labels {data.labels}" if data.labels else "",
    )  # fmt: skip


def make_sample_fn(tokenizer: Tokenizer, prompt: list[int], tokens: int, dist: DistInfo, device: torch.device):
    """The model's reply (sampled) to the first validation prompt."""

    def sample(model: nn.Module) -> str | None:
        if not dist.is_main:
            return None
        net = unwrap(model)
        was_training = net.training
        net.eval()
        try:
            new = max(1, min(tokens, net.config.block_size // 2))
            idx = torch.tensor([prompt[-(net.config.block_size - new) :]], dtype=torch.long, device=device)
            out = net.generate(idx, max_new_tokens=new, temperature=0.8, top_k=200)
        finally:
            net.train(was_training)
        return tokenizer.decode(out[0, idx.size(1) :].tolist(), skip_special_tokens=False)

    return sample


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


class CheckpointWriter:
    """The loop's save callback: every rank joins the gather (FSDP), rank 0 writes the checkpoint."""

    def __init__(self, c: Components, root: Path, cfg: Config, data: TaskData, model_config: dict[str, Any],
                 spec: LoraSpec | None, base_ref: BaseModelRef | None, run_dir: Path) -> None:  # fmt: skip
        self.c, self.root, self.cfg, self.data = c, root, cfg, data
        self.model_config, self.spec, self.base_ref, self.run_dir = model_config, spec, base_ref, run_dir

    def save(self, state: TrainState, improved: bool) -> None:
        c, fcfg = self.c, self.cfg.finetune
        model_state = full_model_state(c.model, c.dist)
        optim_state = full_optimizer_state(_optim_target(c.model, c.dist), c.optimizer, c.dist)
        if c.dist.is_main:
            train_state = training_state(c, state, model_state, optim_state)
            info = {
                "stage": "finetune",
                "step": state.step,
                "val_loss": state.last_val,
                "select_metric": c.select_metric,
                "best": state.best_val if math.isfinite(state.best_val) else None,
                "eos_id": self.data.stats.get("eos_id"),
                "base": self.base_ref.path if self.base_ref else fcfg.base,
                "finetune": {"task": fcfg.task, "method": fcfg.method, "labels": self.data.labels},
            }
            prefix = "backbone." if fcfg.task == "classify" else ""
            net_state = {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
            weights = None if fcfg.method == "lora" else net_state
            path = ckpt.save_checkpoint(self.root, state.step, weights, self.model_config, train_state, info,
                                        self.run_dir / "tokenizer.json",
                                        lambda d: self._write_extra(d, model_state, net_state))  # fmt: skip
            if improved:
                ckpt.write_best(self.root, path)
            ckpt.prune(self.root, self.cfg.train.keep_last)
        barrier(c.dist)

    def _write_extra(self, out: Path, model_state: dict[str, torch.Tensor],
                     net_state: dict[str, torch.Tensor]) -> None:  # fmt: skip
        """tokenizer_config.json (the chat template), the adapter (LoRA), the classifier head."""
        if (self.run_dir / TOKENIZER_CONFIG).is_file():
            shutil.copyfile(self.run_dir / TOKENIZER_CONFIG, out / TOKENIZER_CONFIG)
        if self.spec is not None and self.base_ref is not None:
            from safetensors.torch import save_file

            from lmforge.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig

            adapter = {k: v.contiguous() for k, v in net_state.items() if k.endswith((".lora_A", ".lora_B"))}
            modules = sorted({k.rsplit(".", 1)[0] for k in adapter})
            save_file(adapter, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            config = AdapterConfig(self.spec, modules, self.base_ref).to_dict()
            (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if self.cfg.finetune.task == "classify":
            head = {k[len("head.") :]: v for k, v in model_state.items() if k.startswith("head.")}
            config = {"task": "classify", "labels": self.data.labels, "pooling": self.cfg.finetune.pooling,
                      "eos_id": self.data.stats.get("eos_id"), "max_length": self.data.stats["max_length"]}
            cls.save_head(out, head, config)


def copy_adapter(source: Path, out: Path) -> Path:
    """The adapter files of a LoRA checkpoint (and its tokenizer, classifier head) as `<run>/adapter/`."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in ("train_state.pt", "checksums.json", "info.json", "model_config.json"):
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
