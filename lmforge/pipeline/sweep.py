"""`lmforge sweep FILE`: hyperparameter search over any config keys with Optuna.

The file is an ordinary config for the trial's verb (`sweep.command`: pretrain or finetune) plus a
`sweep:` section naming the verb's input and the searched keys:

    sweep:
      command: pretrain
      inputs: [runs/demo/encode]
      params:
        train.optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        model.n_layer: {low: 1, high: 4}
        train.schedule.name: {choices: [cosine, linear]}

Each trial is one `lmforge VERB` process (`sweep.jobs` of them at once) with the sampled values written
into its config. The sweep reads the trial's `metrics.jsonl` as it grows: every evaluation event reports
its `sweep.objective` to Optuna, and Optuna's MedianPruner stops a trial whose evaluations fall behind the
median of earlier trials at the same step (the process is terminated). TPE proposes the values.

Written to the sweep's run directory: `trials.csv` (every trial's values, objective, state, time),
`objective.png` (the objective by trial, best so far), `best.yaml` (the best trial's full config, to
rerun with the same verb), `trials/NNN/` (each trial's run) and the manifest.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lmforge.config import Config, PipelineConfig, SweepConfig, SweepParam, apply_override, valid_keys
from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import atomic_path, atomic_write_text, default_run_dir, start_run

log = logging.getLogger("lmforge")
POLL_SECONDS = 0.25


def direction_of(sc: SweepConfig) -> str:
    if sc.direction != "auto":
        return sc.direction
    return "minimize" if "loss" in sc.objective or "ppl" in sc.objective else "maximize"


def param_type(key: str, p: SweepParam) -> str:
    if p.type:
        return p.type
    if p.choices:
        return "categorical"
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (p.low, p.high))
    return "int" if ints and not (isinstance(p.step, float) and not float(p.step).is_integer()) else "float"


def check_sweep(cfg: Config) -> None:
    """Every searched key exists and takes the values its range may give; the input exists."""
    sc = cfg.sweep
    if not sc.params:
        raise ConfigError("sweep.params is empty: name the keys to search, e.g. "
                          "sweep.params: {train.optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}")  # fmt: skip
    if sc.n_trials < 1 or sc.jobs < 1:
        raise ConfigError("sweep.n_trials and sweep.jobs must be at least 1")
    keys = set(valid_keys())
    for key, p in sc.params.items():
        if key.split(".", 1)[0] in ("sweep", "pipeline") or key not in keys:
            from lmforge.config import unknown_key_error

            raise unknown_key_error(key, "sweep.params: ")
        kind = param_type(key, p)
        if kind == "categorical":
            if not p.choices:
                raise ConfigError(f"sweep.params.{key}: a categorical parameter needs choices: [...]")
            samples = list(p.choices)
        else:
            if p.low is None or p.high is None or not p.low < p.high:
                raise ConfigError(f"sweep.params.{key}: needs low < high (got low={p.low}, high={p.high})")
            if p.log and p.low <= 0:
                raise ConfigError(f"sweep.params.{key}: a log range needs low > 0")
            if p.log and p.step is not None:
                raise ConfigError(f"sweep.params.{key}: give log or step, not both")
            samples = [p.low, p.high]
        for value in samples:
            apply_override(cfg, key, value)  # a value the key cannot take fails here, before any trial
    if not sc.inputs:
        raise ConfigError(f"sweep.inputs: name the {sc.command} input (token shards for pretrain, data for finetune)")
    for path in sc.inputs:
        if not Path(path).exists():
            raise ConfigError(f"sweep.inputs: no such file or directory: {path}")


def suggest(trial: Any, key: str, p: SweepParam) -> Any:
    kind = param_type(key, p)
    if kind == "categorical":
        return trial.suggest_categorical(key, list(p.choices))
    if kind == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)


def trial_config(cfg: Config, values: dict[str, Any], threads: int) -> Config:
    trial_cfg = dataclasses.replace(cfg, sweep=SweepConfig(), pipeline=PipelineConfig())
    for key, value in values.items():
        trial_cfg = apply_override(trial_cfg, key, value)
    if trial_cfg.train.threads is None:
        trial_cfg = apply_override(trial_cfg, "train.threads", threads)
    return trial_cfg


def _config_text(cfg: Config) -> str:
    import yaml

    tree = dataclasses.asdict(cfg)
    tree.pop("sweep")
    tree.pop("pipeline")
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


class MetricsTail:
    """New evaluation events of a growing metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, ""

    def new_evals(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next read
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "eval":
                events.append(event)
        return events


@dataclasses.dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    evals: int
    seconds: float
    dir: str
    error: str | None = None


def run_trial(trial: Any, cfg: Config, out: Path, threads: int, outcomes: dict[int, TrialOutcome]) -> float:
    import optuna

    sc = cfg.sweep
    values = {key: suggest(trial, key, p) for key, p in sc.params.items()}
    trial_dir = out / "trials" / f"{trial.number:03d}"
    config_file = out / "trials" / f"{trial.number:03d}.yaml"
    atomic_write_text(config_file, _config_text(trial_config(cfg, values, threads)))
    cmd = [sys.executable, "-m", "lmforge.cli", sc.command, *[str(Path(p).resolve()) for p in sc.inputs],
           "--config", str(config_file.resolve()), "--out", str(trial_dir.resolve())]  # fmt: skip
    if trial_dir.exists():
        import shutil

        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    log.info("trial %d: %s", trial.number, shown)
    started = time.perf_counter()
    tail = MetricsTail(trial_dir / "metrics.jsonl")
    direction = direction_of(sc)
    best: float | None = None
    evals = 0
    pruned = False
    with open(trial_dir / "trial.log", "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                done = proc.poll() is not None
                for event in tail.new_evals():
                    value = event.get(sc.objective)
                    if not isinstance(value, int | float) or not math.isfinite(value):
                        continue
                    evals += 1
                    better = best is None or (value < best if direction == "minimize" else value > best)
                    best = value if better else best
                    trial.report(float(value), int(event.get("step", evals)))
                    if trial.should_prune():
                        pruned = True
                        break
                if pruned or done:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    seconds = time.perf_counter() - started
    outcome = TrialOutcome(trial.number, "pruned" if pruned else "complete", best, values, evals, seconds,
                           str(trial_dir))  # fmt: skip
    outcomes[trial.number] = outcome
    if pruned:
        log.info("trial %d: pruned after %d evaluations (%s %s) in %.1f s", trial.number, evals, sc.objective,
                 _fmt(best), seconds)  # fmt: skip
        raise optuna.TrialPruned()
    if proc.returncode != 0 or best is None:
        text = (trial_dir / "trial.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        error = next((line for line in reversed(text) if line.startswith("error:")), text[-1] if text else "")
        outcome.state = "failed"
        outcome.error = error if proc.returncode != 0 else f"no '{sc.objective}' in any evaluation"
        log.warning("trial %d failed: %s", trial.number, outcome.error)
        return float("nan")  # Optuna records a NaN objective as a failed trial
    log.info("trial %d: %s %s (%d evaluations, %.1f s)", trial.number, sc.objective, _fmt(best), evals, seconds)
    return float(best)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_sweep(cfg: Config, out: str | Path | None = None) -> dict[str, Any]:
    """Run the search; returns {best: {number, value, params, config}, trials: [...]} and writes its files."""
    import optuna

    check_sweep(cfg)
    sc = cfg.sweep
    out_dir = Path(out or sc.out or default_run_dir(cfg, "sweep"))
    threads = sc.trial_threads or max(1, (os.cpu_count() or 1) // sc.jobs)
    direction = direction_of(sc)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    outcomes: dict[int, TrialOutcome] = {}
    with start_run("sweep", cfg, out_dir) as run:
        study = optuna.create_study(
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=sc.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=sc.pruner_startup_trials,
                                               n_warmup_steps=sc.pruner_warmup_steps),
        )  # fmt: skip
        log.info("sweep: %d trials of `lmforge %s` (%d at once, %d threads each), %s %s over %s",
                 sc.n_trials, sc.command, sc.jobs, threads, direction, sc.objective, ", ".join(sc.params))  # fmt: skip
        study.optimize(lambda t: run_trial(t, cfg, out_dir, threads, outcomes), n_trials=sc.n_trials,
                       n_jobs=sc.jobs, catch=())  # fmt: skip
        trials = [outcomes[n] for n in sorted(outcomes)]
        complete = [t for t in trials if t.state == "complete" and t.value is not None]
        if not complete:
            raise LmforgeError(f"sweep: no trial finished ({trials[0].error if trials and trials[0].error else 'all pruned or failed'}); "
                               f"see {out_dir}/trials/*/trial.log")  # fmt: skip
        best = min(complete, key=lambda t: t.value) if direction == "minimize" else max(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
        best_cfg = trial_config(cfg, best.params, threads)
        inputs = " ".join(sc.inputs)
        header = (f"# The best of {len(trials)} trials of `lmforge sweep` ({sc.objective} {_fmt(best.value)}, trial "
                  f"{best.number}); rerun it with:\n#   lmforge {sc.command} {inputs} -c {out_dir / 'best.yaml'}\n"
                  + "".join(f"#   {k}: {_fmt(v)}\n" for k, v in best.params.items()))  # fmt: skip
        atomic_write_text(out_dir / "best.yaml", header + _config_text(best_cfg))
        write_csv(out_dir / "trials.csv", trials, list(sc.params), sc.objective)
        plot_trials(out_dir / "objective.png", trials, sc.objective, direction)
        table = format_table(trials, list(sc.params), sc.objective, best.number)
        atomic_write_text(out_dir / "trials.md", table)
        for name in ("best.yaml", "trials.csv", "trials.md", "objective.png"):
            run.add_output(out_dir / name)
        run.add_inputs(sc.inputs)
        result = {
            "best": {"number": best.number, "value": best.value, "params": best.params,
                     "config": str(out_dir / "best.yaml")},
            "direction": direction,
            "objective": sc.objective,
            "trials": [dataclasses.asdict(t) for t in trials],
        }  # fmt: skip
        run.extra["sweep"] = result
    print(table)
    print(f"best: trial {best.number}, {sc.objective} {_fmt(best.value)}; config {out_dir / 'best.yaml'}")
    return result


def write_csv(path: Path, trials: list[TrialOutcome], keys: list[str], objective: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", objective, *keys, "evaluations", "seconds", "dir", "error"])
    for t in trials:
        writer.writerow([t.number, t.state, "" if t.value is None else t.value, *[t.params.get(k) for k in keys],
                         t.evals, round(t.seconds, 2), t.dir, t.error or ""])  # fmt: skip
    atomic_write_text(path, buf.getvalue())


def format_table(trials: list[TrialOutcome], keys: list[str], objective: str, best: int) -> str:
    head = ["trial", "state", objective, *keys, "evals", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t in trials:
        mark = " (best)" if t.number == best else ""
        cells = [f"{t.number}{mark}", t.state, _fmt(t.value) if t.value is not None else "-",
                 *[_fmt(t.params.get(k)) for k in keys], str(t.evals), f"{t.seconds:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_trials(path: Path, trials: list[TrialOutcome], objective: str, direction: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for state, marker, color in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:gray")):
        points = [(t.number, t.value) for t in trials if t.state == state and t.value is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, color=color, label=state, zorder=3)
    running, best_line = None, []
    for t in trials:
        if t.state == "complete" and t.value is not None:
            better = running is None or (t.value < running if direction == "minimize" else t.value > running)
            running = t.value if better else running
        best_line.append((t.number, running))
    shown = [(n, v) for n, v in best_line if v is not None]
    if shown:
        ax.step(*zip(*shown), where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

