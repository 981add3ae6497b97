"""`lmforge evaluate`: run a list of tasks on one model and write the report into a run directory.

    run_evaluate(cfg)  ->  the report dict, also written as <run>/report.json, report.md, confusion_*.png
                           (+ hypotheses_<task>.txt for generation tasks)

Every task is built (its files found, its settings checked) before the model is loaded, so a typo fails
in a second; the model is loaded once for all tasks that need it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.config import Config, EvalConfig
from lmforge.errors import ConfigError, DataError
from lmforge.eval.report import write_report
from lmforge.eval.scoring import ModelBundle
from lmforge.eval.tasks import Predictor, Task, build_task, classify_task
from lmforge.runs import atomic_write_text, start_run

log = logging.getLogger("lmforge")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_config(ec: EvalConfig) -> None:
    if not ec.tasks:
        raise ConfigError("no tasks: give --task NAME (see `lmforge evaluate --list`) or eval.tasks=[...]")
    for key in ("limit", "batch_size", "max_length", "stride"):
        value = getattr(ec, key)
        if value is not None and value < 1:
            raise ConfigError(f"eval.{key} must be at least 1, got {value}")
    if ec.worst_n < 0:
        raise ConfigError(f"eval.worst_n must be 0 or more, got {ec.worst_n}")


def load_bundle(ec: EvalConfig) -> ModelBundle:
    """The model named by eval.model, on eval.device, with the context length the tasks may use."""
    from lmforge.infer.load import load_model
    from lmforge.train.distributed import pick_device

    if not ec.model:
        raise ConfigError("no model given: lmforge evaluate MODEL (a checkpoint, run or Hugging Face dir)")
    device = pick_device(ec.device)
    loaded = load_model(ec.model, device=device, dtype=DTYPES[ec.dtype])
    if loaded.tokenizer is None:
        raise DataError(f"{ec.model}: no tokenizer.json beside the model, so text cannot be encoded")
    block = loaded.model.config.block_size
    max_length = ec.max_length or block
    if max_length > block:
        raise ConfigError(f"eval.max_length={max_length} exceeds the model's block_size ({block})")
    if max_length < 2:
        raise ConfigError("eval.max_length must be at least 2 (a token and one to predict)")
    if ec.stride is not None and ec.stride >= max_length:
        raise ConfigError(f"eval.stride ({ec.stride}) must be smaller than max_length ({max_length})")
    return ModelBundle(
        loaded.model, loaded.tokenizer, device, loaded.eos_id, max_length, ec.batch_size, str(loaded.source)
    )


def model_classifier(ec: EvalConfig) -> Predictor | None:
    """eval.model's classification head as the classify task's predictor, when eval.model is a classifier
    fine-tuned by `lmforge finetune --task classify` (and no eval.classify.predictions file is given)."""
    if not ec.model or ec.classify.predictions:
        return None
    from lmforge.finetune.classify import classifier_predictor, is_classifier
    from lmforge.train.distributed import pick_device

    if not is_classifier(ec.model):
        return None
    return classifier_predictor(ec.model, pick_device(ec.device), ec.batch_size)


def build_tasks(ec: EvalConfig, predictors: dict[str, Predictor] | None = None) -> list[Task]:
    tasks = []
    for name in ec.tasks:
        predict = None
        if name == "classify":
            predict = (predictors or {}).get("classify") or model_classifier(ec)
        if predict is not None:
            tasks.append(classify_task(ec, predict))
        else:
            tasks.append(build_task(name, ec))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"task '{dupes[0]}' is listed twice")
    return tasks


def run_evaluate(
    cfg: Config, out: str | Path | None = None, predictors: dict[str, Predictor] | None = None
) -> dict[str, Any]:
    """Evaluate eval.model on eval.tasks; the report (also written to the run directory).

    predictors: a classifier callable per task name (texts -> labels), the seam for classification heads.
    """
    ec = cfg.eval
    check_config(ec)
    tasks = build_tasks(ec, predictors)
    bundle = load_bundle(ec) if any(t.needs_model for t in tasks) else None
    if ec.limit is not None:
        log.info("evaluate: at most %d examples per task (eval.limit)", ec.limit)

    with start_run("evaluate", cfg, out) as run:
        for task in tasks:
            run.add_inputs(task.inputs())
        report: dict[str, Any] = {"model": _model_info(bundle, ec), "limit": ec.limit, "tasks": {}}
        for task in tasks:
            log.info("evaluate: %s ...", task.name)
            t0 = time.perf_counter()
            result = task.run(bundle, ec)
            seconds = time.perf_counter() - t0
            hypotheses = result.pop("hypotheses", None)
            if hypotheses is not None:
                file = run.path(f"hypotheses_{task.name}.txt")
                atomic_write_text(file, "".join(h.replace("\n", " ") + "\n" for h in hypotheses))
                run.add_output(file)
            report["tasks"][task.name] = {
                "task": task.name,
                "kind": task.kind,
                **result,
                "seconds": round(seconds, 3),
                "examples_per_s": round(result["n"] / seconds, 2) if seconds else None,
            }
            shown = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items() if isinstance(v, float))
            log.info(
                "evaluate: %s: %d examples in %.1f s (%.1f/s): %s",
                task.name,
                result["n"],
                seconds,
                result["n"] / max(seconds, 1e-9),
                shown,
            )
        for path in write_report(run.dir, report):
            run.add_output(path)
        log.info("evaluate: report in %s", run.dir / "report.md")
    return report


def _model_info(bundle: ModelBundle | None, ec: EvalConfig) -> dict[str, Any]:
    if bundle is None:
        return {}
    cfg = bundle.model.config
    return {
        "path": ec.model,
        "source": bundle.name,
        "kind": cfg.flavour,
        "parameters": bundle.model.num_params(),
        "vocab_size": cfg.vocab_size,
        "block_size": cfg.block_size,
        "max_length": bundle.max_length,
        "device": str(bundle.device),
        "dtype": ec.dtype,
    }
