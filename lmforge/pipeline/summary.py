"""The table a pipeline ends with: per stage its status, time, key figures and directory; then a sample."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.pipeline.stages import MODEL, STAGES

if TYPE_CHECKING:
    from lmforge.pipeline.runner import StageResult
    from lmforge.pipeline.spec import PipelineSpec

log = logging.getLogger("lmforge")


def final_model(spec: PipelineSpec, results: list[StageResult]) -> StageResult | None:
    """The last stage that made a language model (a classifier is not one to sample from)."""
    for result in reversed(results):
        stage = spec.stage(result.name)
        if MODEL in STAGES[result.kind].makes and not (result.kind == "finetune" and stage.config.finetune.task == "classify"):
            return result
    return None


def sample_text(model_dir: Path, prompt: str, tokens: int, seed: int) -> str | None:
    """A seeded sample from the model in `model_dir` (None if it cannot be loaded for generation)."""
    import torch

    from lmforge.errors import LmforgeError
    from lmforge.infer.generate import SamplingParams, generate
    from lmforge.infer.load import load_model

    try:
        loaded = load_model(model_dir, device=torch.device("cpu"))
        params = SamplingParams(max_new_tokens=tokens, temperature=0.8, top_k=50, seed=seed)
        return generate(loaded.model, loaded.tokenizer, [prompt], params, eos_id=loaded.eos_id)[0].text
    except LmforgeError as exc:
        log.warning("no sample from %s: %s", model_dir, exc)
        return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_summary(spec: PipelineSpec, results: list[StageResult], sample: str | None,
                   sample_from: str | None) -> str:  # fmt: skip
    rows = []
    total = 0.0
    for r in results:
        kind = STAGES[r.kind]
        figures = kind.summarize(r.dir) if kind.summarize else {}
        shown = "; ".join(f"{k}: {v}" for k, v in figures.items()) or "-"
        label = r.name if r.name == r.kind else f"{r.name} ({r.kind})"
        seconds = f"{r.seconds:.1f}" if r.status != "cached" else "-"
        rows.append(f"| {label} | {r.status} | {seconds} | {_cell(shown)} | {r.dir} |")
        total += r.seconds
    lines = [
        f"## pipeline {spec.name}: {len(results)} stages, {total:.1f} s  ({spec.out})",
        "",
        "| stage | status | seconds | figures | directory |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]
    if sample is not None:
        lines += ["", f"sample from {sample_from} (prompt {spec.settings.sample_prompt!r}):", "", "```",
                  f"{spec.settings.sample_prompt or ''}{sample}".strip("\n"), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"
