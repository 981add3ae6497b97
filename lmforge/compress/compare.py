"""Before/after measurements shared by quantize, distill and prune, and the report they write.

Every compress verb measures the model it started from and the one it produced the same way: bytes of the
weight files on disk, parameters (and how many are non-zero), mean cross-entropy and perplexity on fixed
windows of the validation shards, and greedy decode tokens/s (batch of one, KV cache, median of repeats).
The result is `<run>/compress_report.json` and a markdown table.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import CompressEvalConfig
from lmforge.errors import DataError
from lmforge.runs import Run, atomic_write_json
from lmforge.train.data import ShardMeta, TokenSplit, eval_offsets, read_meta

REPORT = "compress_report.json"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data")


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def resolve_shards(data: str | None, source: Path | None) -> ShardMeta | None:
    """The token shards named by compress.data, else those the model was trained on (its info.json), else
    None (then perplexity is left out of the report)."""
    if data:
        return read_meta(data)
    if source is None:
        return None
    info_file = source / "info.json"
    if not info_file.is_file():
        return None
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        recorded = json.loads(info_file.read_text(encoding="utf-8")).get("data")
        if isinstance(recorded, str) and (Path(recorded) / "meta.json").is_file():
            return read_meta(recorded)
    return None


def check_shards_fit(meta: ShardMeta, vocab_size: int, who: str) -> None:
    if meta.vocab_size > vocab_size:
        raise DataError(
            f"{meta.dir}: shards come from a tokenizer with {meta.vocab_size} tokens, but {who} has a vocabulary "
            f"of {vocab_size}; they were made by a different tokenizer (compress.data)"
        )


def val_split(meta: ShardMeta | None) -> TokenSplit | None:
    return TokenSplit(meta, "val") if meta is not None and "val" in meta.splits else None


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files of a model directory (or of one weight file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


# ---------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); a shared tensor counts once, a quantized one by its int8 values."""
    total = nonzero = 0
    for p in model.parameters():  # yields a tied tensor once
        values = getattr(p, "qdata", p)  # torchao's Int8Tensor keeps its int8 values in qdata
        total += p.numel()
        nonzero += int(torch.count_nonzero(values.detach()))
    return total, nonzero


def window_length(split: TokenSplit, *models: nn.Module) -> int:
    """Tokens per evaluation window: the smallest block_size among the models, within the split."""
    block = min(m.config.block_size for m in models)  # type: ignore[union-attr]
    return max(1, min(block, split.num_tokens - 1))


def _batches(split: TokenSplit, length: int, windows: int, batch_size: int) -> Iterator[torch.Tensor]:
    offsets = eval_offsets(split, length, windows)
    for i in range(0, len(offsets), batch_size):
        yield split.windows(offsets[i : i + batch_size], length + 1)


@torch.no_grad()
def val_loss(model: nn.Module, split: TokenSplit, length: int, windows: int, batch_size: int,
             device: torch.device) -> float:  # fmt: skip
    """Mean next-token cross-entropy over `windows` fixed windows of the split (the same for every model)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for rows in _batches(split, length, windows, batch_size):
        rows = rows.to(device)
        _, loss = model(rows[:, :-1], targets=rows[:, 1:])
        total += float(loss) * rows.size(0)
        count += rows.size(0)
    model.train(was_training)
    return total / max(1, count)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:  # fmt: skip
    """Mean over tokens of KL(teacher || student) between the softmaxes at `temperature` (in nats)."""
    vocab = student_logits.size(-1)
    log_student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def teacher_kl(student: nn.Module, teacher: nn.Module, split: TokenSplit, length: int, windows: int,
               batch_size: int, device: torch.device) -> float:  # fmt: skip
    """Mean per-token KL(teacher || student) at temperature 1 on fixed validation windows."""
    states = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    for rows in _batches(split, length, windows, batch_size):
        x = rows[:, :-1].to(device)
        kl = kl_divergence(student(x)[0], teacher(x)[0])
        total += float(kl) * x.numel()
        count += x.numel()
    student.train(states[0])
    teacher.train(states[1])
    return total / max(1, count)


def decode_tokens_per_s(model: nn.Module, prompt: list[int], new_tokens: int, repeats: int) -> float:
    """Greedy decode speed of one sequence through `generate` (KV cache): new tokens / seconds, the median
    of `repeats` runs after a warm-up run."""
    from lmforge.infer.generate import SamplingParams, generate

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    generate(model, None, [prompt], params)  # type: ignore[arg-type]  # warm-up: allocations, lazy init
    speeds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = generate(model, None, [prompt], params)  # type: ignore[arg-type]
        speeds.append(len(out[0].token_ids) / (time.perf_counter() - start))
    return statistics.median(speeds)


def timing_prompt(split: TokenSplit | None, n_tokens: int, block_size: int) -> list[int]:
    n = max(1, min(n_tokens, block_size // 2))
    if split is None or split.num_tokens < n:
        return [0] * n
    return split.windows(eval_offsets(split, n, 1), n)[0].tolist()


def measure(model: nn.Module, weights: Path | None, split: TokenSplit | None, ec: CompressEvalConfig,
            device: torch.device, length: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The row of the report for one model (None where a measurement was not possible or switched off)."""
    params, nonzero = parameter_counts(model)
    stats: dict[str, Any] = {
        "bytes_on_disk": weights_bytes(weights) if weights is not None else None,
        "parameters": params,
        "nonzero_parameters": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else None,
        "val_loss": None,
        "perplexity": None,
        "decode_tokens_per_s": None,
    }
    block = model.config.block_size  # type: ignore[union-attr]
    with torch_threads(ec.threads):
        if split is not None and ec.windows > 0:
            n = length or window_length(split, model)
            loss = val_loss(model, split, n, ec.windows, ec.batch_size, device)
            stats["val_loss"], stats["perplexity"] = loss, math.exp(min(loss, 700.0))
        if ec.gen_tokens > 0:
            prompt = timing_prompt(split, ec.prompt_tokens, block)
            new_tokens = max(1, min(ec.gen_tokens, block - len(prompt)))
            stats["decode_tokens_per_s"] = decode_tokens_per_s(model, prompt, new_tokens, ec.repeats)
    return stats


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------

ROWS = (
    ("bytes_on_disk", "size on disk (MiB)", lambda v: f"{v / 2**20:.2f}"),
    ("parameters", "parameters", lambda v: f"{v:,}"),
    ("nonzero_parameters", "non-zero parameters", lambda v: f"{v:,}"),
    ("val_loss", "val loss", lambda v: f"{v:.4f}"),
    ("perplexity", "val perplexity", lambda v: f"{v:.3f}"),
    ("teacher_kl", "KL(teacher ‖ model)", lambda v: f"{v:.4f}"),
    ("decode_tokens_per_s", "decode tokens/s", lambda v: f"{v:.1f}"),
)


def ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """after / before for every measured key both sides have (speedup for tokens/s)."""
    out: dict[str, float | None] = {}
    for key, _, _ in ROWS:
        a, b = after.get(key), before.get(key)
        out[key] = round(a / b, 4) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    return out


def build_report(stage: str, method: str, source: str, output: str, before: dict[str, Any],
                 after: dict[str, Any], details: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "stage": stage,
        "method": method,
        "source": source,
        "output": output,
        "before": before,
        "after": after,
        "after_over_before": ratios(before, after),
        "details": details or {},
    }


def render_table(report: dict[str, Any], labels: tuple[str, str] = ("before", "after")) -> str:
    """The report as a markdown table: one row per measurement both or either side has."""
    before, after, ratio = report["before"], report["after"], report["after_over_before"]
    lines = [
        f"{report['stage']} ({report['method']}): {report['source']} -> {report['output']}",
        "",
        f"| metric | {labels[0]} | {labels[1]} | after/before |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name, fmt in ROWS:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        shown = [fmt(v) if v is not None else "-" for v in (b, a)]
        r = ratio.get(key)
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {f'{r:.3f}' if r is not None else '-'} |")
    return "\n".join(lines)


def write_report(run: Run, report: dict[str, Any]) -> Path:
    path = run.path(REPORT)
    atomic_write_json(path, report)
    run.add_output(path)
    return path
