"""Pipeline benchmark: what running the stages as one `lmforge pipeline` costs and saves (`make bench-pipeline`).

    .venv/bin/python benchmarks/bench_pipeline.py --shared ../shared/data --repeats 3

On a 200,000-character slice of tiny-shakespeare, with a small model (2 layers x 64, 200 steps):
1. by hand: the five verbs (prepare, tokenizer train, tokenizer encode, pretrain, evaluate) as five
   `lmforge` processes, as a user types them;
2. cold: `lmforge pipeline` of the same five stages (one process; the same code paths), from nothing;
3. cached: the same pipeline again (every stage skipped by content);
4. after a change: `pretrain.train.max_steps` changed (pretrain and evaluate rerun, the rest cached).
Each is one process, timed from the outside; medians over --repeats. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = {
    "run": {"seed": 1},
    "data": {"dedup": {"near": False}, "split": {"val": 0.1, "contiguous_min_chars": 1000}},
    "tokenizer": {"kind": "char"},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "train": {"batch_size": 16, "max_steps": 200, "eval_every": 100, "eval_batches": 5, "save_every": 100,
              "log_every": 50, "sample_every_eval": False, "threads": 1},
    "eval": {"tasks": ["lm"], "limit": 1, "lm": {"split": "val"}},
}  # fmt: skip


def lmforge(*args: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"failed: lmforge {' '.join(args)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def by_hand(source: Path, work: Path, config: Path) -> float:
    d = {name: str(work / name) for name in ("data", "tok", "shards", "run", "eval")}
    c = ["-c", str(config)]
    return sum([
        lmforge("prepare", str(source), "-o", d["data"], *c),
        lmforge("tokenizer", "train", d["data"], "-o", d["tok"], *c),
        lmforge("tokenizer", "encode", d["data"], "-t", d["tok"], "-o", d["shards"], *c),
        lmforge("pretrain", d["shards"], "-o", d["run"], *c),
        lmforge("evaluate", d["run"], "-o", d["eval"], *c, f"eval.lm.files=[{d['data']}]"),
    ])  # fmt: skip


def pipeline_file(source: Path, path: Path, out: Path) -> Path:
    stages = [{"stage": "prepare", "inputs": str(source)}, {"stage": "tokenizer"}, {"stage": "encode"},
              {"stage": "pretrain"}, {"stage": "evaluate", "inputs": {"model": "pretrain", "data": "prepare"}}]  # fmt: skip
    tree = {**SHARED, "pipeline": {"out": str(out), "sample_prompt": None, "stages": stages}}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"by hand (5 processes)": [], "pipeline, cold": [], "pipeline, cached": [],
                                     "pipeline, pretrain changed": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "shakespeare.txt"
        source.write_text((args.shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000])
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(SHARED))
        for i in range(args.repeats):
            work = root / f"hand-{i}"
            times["by hand (5 processes)"].append(by_hand(source, work, config))
            out = root / f"pipe-{i}"
            pfile = pipeline_file(source, root / f"p{i}.yaml", out)
            times["pipeline, cold"].append(lmforge("pipeline", str(pfile)))
            times["pipeline, cached"].append(lmforge("pipeline", str(pfile)))
            times["pipeline, pretrain changed"].append(lmforge("pipeline", str(pfile), "pretrain.train.max_steps=150"))
            shutil.rmtree(work)
            shutil.rmtree(out)
            print(f"repeat {i + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    base = statistics.median(times["by hand (5 processes)"])
    print(f"Five stages on 200k characters of tiny-shakespeare (2 x 64 model, 200 steps); medians of {args.repeats}\n")
    print("| run | seconds (median) | min | max | vs by hand |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {min(values):.1f} | {max(values):.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
