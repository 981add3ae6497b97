"""Training metrics: `metrics.jsonl` (one JSON object per log/eval/sample event), TensorBoard event files
under `<run>/tb/`, and `<run>/loss.png` (train and validation loss), all written by rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmforge.runs import atomic_path, atomic_write_text


class MetricsLogger:
    """Appends events to metrics.jsonl and TensorBoard; draws the loss curve on request."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self._tb: Any = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # Drop what a killed run logged after the checkpoint we resume from: it is about to be redone.
            kept = [r for r in _read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.history = kept
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge)

    def log(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.history.append(event)
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        kind, step = event.get("event", "train"), int(event.get("step", 0))
        for key, value in event.items():
            if key not in ("event", "step") and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if kind == "sample":
            self._tb.add_text("sample", str(event.get("text", "")), step)

    def plot(self) -> None:
        """Write loss.png (train loss per log step, val loss per evaluation) atomically."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.history if r.get("event") == "train" and "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.history if r.get("event") == "eval"]
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        if train:
            ax.plot(*zip(*train), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val), "o-", label="val", linewidth=1.5, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        fig.tight_layout()
        with atomic_path(self.run_dir / "loss.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is suspect
    return records
