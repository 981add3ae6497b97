"""The evaluation report: report.json (everything), report.md (for people), confusion-matrix PNGs.

report.json holds, per task: `n` (examples scored), `metrics` (the headline numbers), `details` (counts,
settings, per-class tables), `notes` (anything that qualifies a number, e.g. truncated contexts), `worst`
(the examples the model did worst on), `seconds` and `examples_per_s`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmforge.runs import atomic_path, atomic_write_json, atomic_write_text

HEADLINE = {  # the metrics shown in the summary table, per task kind
    "lm": ["loss", "perplexity", "bits_per_byte"],
    "lambada": ["accuracy", "perplexity"],
    "multiple_choice": ["acc", "acc_norm"],
    "classify": ["accuracy", "macro_f1", "weighted_f1"],
    "translate": ["bleu", "chrf", "exact_match"],
}


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(value: Any) -> str:
    """A value made safe for one Markdown table cell."""
    text = fmt(value).replace("\r", "").replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= 300 else text[:300] + "…"


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def plot_confusion(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> None:
    """A confusion-matrix heat map with counts (rows: true class, columns: predicted), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _task_section(name: str, result: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines = [f"## {name}", ""]
    rate = result.get("examples_per_s")
    lines.append(
        f"{fmt(result['n'])} examples in {result.get('seconds', 0):.1f} s"
        + (f" ({rate:.1f} examples/s)" if rate else "")
        + "."
    )
    lines.append("")
    lines += md_table(["metric", "value"], [[k, v] for k, v in result["metrics"].items()])
    lines.append("")
    for note in result.get("notes", []):
        lines += [f"> **Note:** {note}", ""]
    details = result.get("details", {})
    if result.get("kind") == "classify":
        labels, cm = details["labels"], details["confusion_matrix"]
        rows = [
            [label, *(details["per_class"][label][k] for k in ("precision", "recall", "f1", "support"))]
            for label in labels
        ]
        lines += ["### Per class", ""]
        lines += md_table(["class", "precision", "recall", "f1", "support"], rows)
        lines += ["", "### Confusion matrix (rows: true, columns: predicted)", ""]
        lines += md_table(["true \\ predicted", *labels], [[label, *row] for label, row in zip(labels, cm)])
        lines.append("")
        if name in plots:
            lines += [f"![confusion matrix]({plots[name]})", ""]
    plain = {k: v for k, v in details.items() if not isinstance(v, dict | list)}
    if plain:
        shown = (json.dumps(v, ensure_ascii=False) if isinstance(v, str) else fmt(v) for v in plain.values())
        lines += ["Details:", "", *(f"- {k}: {v}" for k, v in zip(plain, shown)), ""]
    worst = result.get("worst") or []
    if worst:
        lines += [f"### Worst examples ({len(worst)})", ""]
        keys = list(worst[0])
        lines += md_table(keys, [[w.get(k) for k in keys] for w in worst])
        lines.append("")
    return lines


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    lines = ["# Evaluation report", ""]
    model = report.get("model") or {}
    if model:
        lines += [
            f"Model: `{model.get('path')}` ({model.get('kind')}, {fmt(model.get('parameters'))} parameters, "
            f"context {model.get('max_length')} tokens), device {model.get('device')}.",
            "",
        ]
    summary = []
    for name, result in report["tasks"].items():
        keys = HEADLINE.get(result.get("kind", ""), list(result["metrics"])[:3])
        shown = ", ".join(f"{k} {fmt(result['metrics'][k])}" for k in keys if k in result["metrics"])
        summary.append([name, result["n"], shown])
    lines += md_table(["task", "examples", "headline metrics"], summary)
    lines.append("")
    for name, result in report["tasks"].items():
        lines += _task_section(name, result, plots)
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path, report: dict[str, Any]) -> list[Path]:
    """report.json, report.md and a confusion_<task>.png per classification task; the paths written."""
    written = []
    plots: dict[str, str] = {}
    for name, result in report["tasks"].items():
        if result.get("kind") == "classify":
            file = f"confusion_{name}.png"
            details = result["details"]
            plot_confusion(
                run_dir / file, details["labels"], details["confusion_matrix"], f"{name}: confusion"
            )
            plots[name] = file
            written.append(run_dir / file)
    report = {**report, "plots": plots}
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report, plots))
    return [run_dir / "report.json", run_dir / "report.md", *written]
