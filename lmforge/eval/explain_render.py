"""Pictures of an `explain_text` result: attention heat maps and the logit lens as PNG (matplotlib), token
attributions as an HTML page and as ANSI-coloured text for the terminal. All files are written atomically."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.runs import atomic_path, atomic_write_text

METHOD_NAMES = {"integrated_gradients": "integrated gradients", "occlusion": "occlusion"}
LABELLED_TOKENS = 48  # heat maps label their axes with the tokens up to this many


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(token: dict[str, Any]) -> str:
    text = token["text"].replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")
    return text if len(text) <= 12 else text[:11] + "…"


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def attention_pngs(out_dir: Path, result: dict[str, Any]) -> list[Path]:
    """attention_layer_NN.png: one heat map per head (rows: the attending token, columns: the attended)."""
    plt = _pyplot()
    tokens = result["tokens"]
    labels = [_label(t) for t in tokens] if len(tokens) <= LABELLED_TOKENS else None
    written = []
    for layer_index, layer in enumerate(result["attention"]["weights"]):
        heads = len(layer)
        cols = math.ceil(math.sqrt(heads))
        rows = math.ceil(heads / cols)
        side = max(2.6, min(6.0, 0.16 * len(tokens) + 1.2))
        fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
        for h, ax in enumerate(axes.flat):
            if h >= heads:
                ax.axis("off")
                continue
            ax.imshow(layer[h], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"head {h + 1}", fontsize=9)
            if labels is not None:
                size = 7 if len(labels) <= 24 else 5
                ax.set_xticks(range(len(labels)), labels=labels, rotation=90, fontsize=size)
                ax.set_yticks(range(len(labels)), labels=labels, fontsize=size)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"attention, layer {layer_index + 1} (rows attend to columns)")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"attention_layer_{layer_index + 1:02d}.png"))
    return written


def logit_lens_png(path: Path, result: dict[str, Any], max_positions: int = 32) -> Path:
    """The top-1 prediction at each layer (rows) and position (columns), coloured by its probability."""
    plt = _pyplot()
    lens = result["logit_lens"]
    tokens = result["tokens"]
    start = max(0, len(tokens) - max_positions)  # a long prompt: its last positions
    probs = [[pos[0]["prob"] for pos in layer[start:]] for layer in lens["top"]]
    width = max(5.0, 0.75 * (len(tokens) - start) + 2)
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(lens["layers"]) + 1.8))
    ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for row, layer in enumerate(lens["top"]):
        for col, pos in enumerate(layer[start:]):
            text = _label({"text": pos[0]["token"]})[:6]
            ax.text(col, row, text, ha="center", va="center", fontsize=7,
                    color="white" if pos[0]["prob"] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(tokens) - start), labels=[_label(t) for t in tokens[start:]], rotation=90, fontsize=7)
    ax.set_yticks(range(len(lens["layers"])), labels=lens["layers"], fontsize=8)
    ax.set_xlabel("input token (the prediction is for the token after it)")
    ax.set_title("logit lens: top next-token prediction after each layer")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Attributions: HTML and ANSI
# ---------------------------------------------------------------------------------------------------------


def normalised(scores: Sequence[float], special: Sequence[bool]) -> list[float]:
    """Scores over the largest absolute non-special score: in [-1, 1]; special tokens 0."""
    peak = max((abs(s) for s, sp in zip(scores, special) if not sp), default=0.0)
    return [0.0 if sp or peak == 0 else s / peak for s, sp in zip(scores, special)]


def _decision_line(result: dict[str, Any]) -> str:
    attribution = result["attribution"]
    return (
        f"target {attribution['target']!r}: p = {attribution['p_text']:.4f} for the text, "
        f"{attribution['p_baseline']:.4f} with every token replaced by {attribution['baseline']!r}"
    )


def attribution_html(path: Path, result: dict[str, Any]) -> Path:
    """A standalone page: the text once per method, each token shaded by its attribution (green for the
    target, red against it), its score in a tooltip."""
    attribution = result["attribution"]
    special = [t["special"] for t in result["tokens"]]
    sections = []
    for key, name in METHOD_NAMES.items():
        scores = attribution[key]["scores"]
        spans = []
        for token, score, weight in zip(result["tokens"], scores, normalised(scores, special)):
            colour = f"rgba(22,163,74,{weight:.3f})" if weight >= 0 else f"rgba(220,38,38,{-weight:.3f})"
            cls = ' class="special"' if token["special"] else ""
            spans.append(f'<span{cls} style="background:{colour}" title="{score:+.5f}">'
                         f"{html.escape(token['text'])}</span>")  # fmt: skip
        note = ""
        if key == "integrated_gradients":
            total = sum(scores)
            note = (f"<p class=note>sum of scores {total:+.4f}; p(text) − p(baseline) = "
                    f"{attribution['p_text'] - attribution['p_baseline']:+.4f} "
                    f"({attribution[key]['steps']} steps, error {attribution[key]['delta']:.2g})</p>")  # fmt: skip
        sections.append(f"<h2>{name}</h2><p class=tokens>{''.join(spans)}</p>{note}")
    prediction = result.get("prediction", {})
    if "probabilities" in prediction:
        rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{p:.4f}</td></tr>"
                       for label, p in zip(prediction["labels"], prediction["probabilities"]))  # fmt: skip
        table = f"<table><tr><th>class</th><th>probability</th></tr>{rows}</table>"
    else:
        rows = "".join(f"<tr><td>{html.escape(repr(n['token']))}</td><td>{n['prob']:.4f}</td></tr>"
                       for n in prediction.get("next", []))  # fmt: skip
        table = f"<table><tr><th>next token</th><th>probability</th></tr>{rows}</table>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmforge explain: attributions</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #1f2937; }}
.tokens {{ font: 17px/2 ui-monospace, monospace; white-space: pre-wrap; }}
.tokens span {{ border-radius: 3px; padding: 1px 0; }}
.special {{ color: #9ca3af; }}
.note {{ color: #6b7280; font-size: 13px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #e5e7eb; padding: 2px 10px; }}
</style></head><body>
<h1>Token attributions</h1>
<p>Model <code>{html.escape(result["model"]["path"])}</code>. {html.escape(_decision_line(result))}.</p>
{table}
{"".join(sections)}
</body></html>
"""
    atomic_write_text(path, page)
    return path


GREENS = (22, 28, 34, 40, 46)  # xterm-256 backgrounds, faint to strong
REDS = (52, 88, 124, 160, 196)


def ansi_tokens(tokens: Sequence[dict[str, Any]], scores: Sequence[float], color: bool) -> str:
    """The text with each token's background by its normalised score; without colour, the top tokens
    are bracketed instead."""
    special = [t["special"] for t in tokens]
    weights = normalised(scores, special)
    out = []
    for token, weight in zip(tokens, weights):
        text = token["text"].replace("\n", "⏎")
        if token["special"]:
            out.append(f"\x1b[2m{text}\x1b[0m" if color else text)
        elif not color:
            out.append(f"[{text}]" if weight >= 0.5 else text)
        elif abs(weight) < 0.1:
            out.append(text)
        else:
            shade = (GREENS if weight > 0 else REDS)[min(4, int(abs(weight) * 5))]
            fg = 16 if weight > 0 and abs(weight) >= 0.6 else 231
            out.append(f"\x1b[48;5;{shade}m\x1b[38;5;{fg}m{text}\x1b[0m")
    return "".join(out)


def terminal_report(result: dict[str, Any], color: bool, files: Sequence[Path] = ()) -> str:
    """What `lmforge explain` prints: the prediction, the attributions in colour, the logit lens table."""
    lines = [f"{result['model']['kind']} {result['model']['path']}: {len(result['tokens'])} tokens"]
    prediction = result.get("prediction", {})
    if "probabilities" in prediction:
        shown = "  ".join(f"{label} {p:.3f}" for label, p in zip(prediction["labels"], prediction["probabilities"]))
        lines.append(f"prediction: {prediction['predicted']}   ({shown})")
    elif prediction.get("next"):
        lines.append("next token: " + "  ".join(f"{n['token']!r} {n['prob']:.3f}" for n in prediction["next"]))
    if "attribution" in result:
        attribution = result["attribution"]
        special = [t["special"] for t in result["tokens"]]
        lines += ["", f"attributions ({_decision_line(result)}):"]
        for key, name in METHOD_NAMES.items():
            scores = attribution[key]["scores"]
            top = ranked_tokens(result["tokens"], scores, special)[:5]
            lines.append(f"  {name:21} {ansi_tokens(result['tokens'], scores, color)}")
            lines.append(f"  {'':21} top: " + ", ".join(f"{t!r} {s:+.4f}" for t, s in top))
    if "logit_lens" in result:
        lens = result["logit_lens"]
        lines += ["", f"logit lens at the last token {result['tokens'][-1]['text']!r}:"]
        for name, layer in zip(lens["layers"], lens["top"]):
            lines.append(f"  {name:>9}  " + "  ".join(f"{p['token']!r} {p['prob']:.3f}" for p in layer[-1]))
    if files:
        lines += ["", "written: " + ", ".join(str(f) for f in files)]
    return "\n".join(lines)


def ranked_tokens(tokens: Sequence[dict[str, Any]], scores: Sequence[float],
                  special: Sequence[bool]) -> list[tuple[str, float]]:  # fmt: skip
    order = sorted((i for i in range(len(tokens)) if not special[i]), key=lambda i: -scores[i])
    return [(tokens[i]["text"], scores[i]) for i in order]
