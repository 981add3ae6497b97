"""Training benchmark: throughput, MFU, quality per second, peak memory (`make bench-train`).

    .venv/bin/python benchmarks/bench_train.py --shared ../shared/data

1. Builds char-level token shards of tinyshakespeare (first 90% train, last 10% val, like nanoGPT).
2. Measures the fp32 matmul peak of this machine (2048×2048 torch.matmul on the configured threads).
3. Runs `lmforge pretrain` in a subprocess per configuration and reads training tokens/s from its
   metrics.jsonl (training time only, warm-up steps excluded): nanoGPT's CPU setting with and without
   torch.compile, and a ~10M-parameter model; MFU = tokens/s × model.flops_per_token() / peak.
4. Quality per second: val loss over 200 batches of the last 10% after `--quality-seconds` of training
   with configs/shakespeare-char.yaml, its learning rate decaying over that time (schedule.horizon=time).
   With train.compile on, a 3-step run of the same config first fills Inductor's on-disk cache, so the
   timed run compiles warm, as any second run of a config does (`--skip cold` times a cold compile instead).
5. Peak resident memory of each run (ru_maxrss of the subprocess). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# nanoGPT's "shakespeare_char on a MacBook" setting (README): its reference is ~11,000 tok/s here.
NANOGPT_CPU = [
    "model.flavour=gpt2", "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
    "model.dropout=0.0", "train.batch_size=12", "train.optim.lr=1e-3",
]  # fmt: skip
TEN_M = [
    "model.flavour=gpt2", "model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256",
    "model.dropout=0.0", "train.batch_size=8", "train.optim.lr=1e-3",
]  # fmt: skip

# Runs a CLI command in-process and reports its own peak RSS (KiB on Linux) on the last line.
RUNNER = (
    "import resource, sys\n"
    "from lmforge.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "print(f'MAXRSS {peak}', flush=True)\n"
    "sys.exit(rc)\n"
)


def char_tokenizer_json(chars: list[str]) -> str:
    vocab = {c: i for i, c in enumerate(chars)}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": None, "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": chars[0]},
    })  # fmt: skip


def build_shards(text_path: Path, out: Path) -> Path:
    """nanoGPT's prepare.py for shakespeare_char: a char vocabulary, 90% train / 10% val, uint16."""
    import hashlib

    text = text_path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, part in (("train", ids[:n]), ("val", ids[n:])):
        part.tofile(out / f"{name}.bin")
        splits[name] = {
            "files": [{"name": f"{name}.bin", "tokens": len(part), "sha256": hashlib.sha256(part.tobytes()).hexdigest()}],
            "tokens": len(part), "documents": 1,
        }  # fmt: skip
    tok = char_tokenizer_json(chars)
    (out / "tokenizer.json").write_text(tok, encoding="utf-8")
    meta = {
        "dtype": "uint16", "vocab_size": len(chars), "eos_id": None,
        "tokenizer_sha256": hashlib.sha256(tok.encode()).hexdigest(), "splits": splits,
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def matmul_peak(threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    """Best sustained fp32 GFLOP/s of an n×n matmul on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best / 1e9


def flops_per_token(overrides: list[str], vocab: int) -> tuple[int, int]:
    from lmforge.config import load_config
    from lmforge.model.gpt import GPT, GPTConfig

    cfg = load_config(None, overrides)
    with torch.device("meta"):
        model = GPT(GPTConfig.from_model_config(cfg.model, vocab_size=vocab))
    return model.flops_per_token(), model.num_params()


def run_pretrain(
    shards: Path, out: Path, overrides: list[str], config: Path | None = None
) -> tuple[Path, int, float]:
    """`lmforge pretrain` in a fresh subprocess; returns (run dir, peak RSS bytes, wall seconds)."""
    cmd = [sys.executable, "-c", RUNNER, "pretrain", str(shards)]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += [*overrides, "--out", str(out)]
    t = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if result.returncode != 0:
        sys.exit(f"run failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("MAXRSS"))
    return out, peak * 1024, wall


def train_tok_per_s(run: Path, skip_steps: int) -> float:
    """Training tokens/s between the first log after `skip_steps` and the last (evaluation time excluded)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train" and r["step"] >= skip_steps]
    first, last = train[0], train[-1]
    return (last["tokens"] - first["tokens"]) / (last["seconds"] - first["seconds"])


def last_val(run: Path) -> tuple[float, int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["event"] == "eval"]
    return evals[-1]["val_loss"], evals[-1]["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="the shared data directory")
    p.add_argument("--out", default=str(REPO / "bench-out" / "train"), help="where runs are written")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="steps of each throughput run")
    p.add_argument("--quality-seconds", type=float, default=160.0)
    p.add_argument("--quality-config", default=str(REPO / "configs" / "shakespeare-char.yaml"))
    p.add_argument("--skip", nargs="*", default=[], choices=["compile", "10m", "quality", "cold"],
                   help="parts to leave out; 'cold' skips the compile warm-up before the quality run")
    args = p.parse_args()

    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    shards = build_shards(Path(args.shared) / "tinyshakespeare" / "input.txt", out / "shards")
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak (2048², {args.threads} threads): {peak:.1f} GFLOP/s", file=sys.stderr)

    common = [f"train.threads={args.threads}", "train.eval_every=100000", "train.log_every=25",
              "train.sample_every_eval=false", "train.eval_batches=1", "train.save_every=100000"]  # fmt: skip
    rows = []
    configs = [("nanoGPT CPU (4×128, block 64, batch 12)", NANOGPT_CPU, False, args.steps)]
    if "compile" not in args.skip:
        configs.append(("nanoGPT CPU + torch.compile", NANOGPT_CPU, True, args.steps))
    if "10m" not in args.skip:
        configs.append(("~10M params (6×384, block 256, batch 8)", TEN_M, False, max(20, args.steps // 8)))
    for label, model_args, compiled, steps in configs:
        name = label.split(" (")[0].replace(" ", "-").replace("+", "").replace("~", "").lower()
        overrides = [*model_args, *common, f"train.max_steps={steps}", f"train.compile={str(compiled).lower()}",
                     "train.schedule.warmup_steps=10"]  # fmt: skip
        run, rss, wall = run_pretrain(shards, out / name, overrides)
        tok_s = train_tok_per_s(run, skip_steps=50 if steps >= 100 else 5)
        fpt, n_params = flops_per_token(model_args, vocab)
        mfu = tok_s * fpt / (peak * 1e9)
        rows.append((label, n_params, tok_s, mfu, None, rss, wall))
        print(f"{label}: {tok_s:,.0f} tok/s, MFU {mfu:.1%}, peak RSS {rss / 2**20:,.0f} MiB", file=sys.stderr)

    if "quality" not in args.skip:
        config = Path(args.quality_config)
        from lmforge.config import load_config

        cfg = load_config(config)
        # The schedule decays over the time budget (schedule.horizon=time), however many steps fit in it.
        overrides = [
            f"train.threads={args.threads}", f"train.max_seconds={args.quality_seconds}", "train.max_steps=1000000",
            "train.schedule.horizon=time", "train.eval_every=1000000", "train.eval_batches=200",
            "train.save_every=1000000", "train.sample_every_eval=false",
        ]  # fmt: skip
        if cfg.train.compile and "cold" not in args.skip:
            # Compiling costs ~25 s of a cold start on 2 cores; Inductor keeps the kernels in its on-disk cache,
            # so a second run of a config starts warm. A 3-step run first makes the timed run that second run.
            warmup = [*overrides[:1], "train.max_steps=3", "train.sample_every_eval=false", "train.eval_batches=1"]
            run_pretrain(shards, out / "quality-warmup", warmup, config)
        run, rss, wall = run_pretrain(shards, out / "quality", overrides, config)
        val, at_step = last_val(run)
        fpt, n_params = flops_per_token([f"model.{k}={v}" for k, v in _model_overrides(cfg).items()], vocab)
        tok_s = train_tok_per_s(run, skip_steps=50)
        rows.append((f"quality: {config.name}, {args.quality_seconds:.0f} s ({at_step} steps)", n_params, tok_s,
                     tok_s * fpt / (peak * 1e9), val, rss, wall))  # fmt: skip

    print(f"\nfp32 matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads); torch {torch.__version__}\n")
    print("| run | params | train tok/s | MFU | val loss | peak RSS | wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, n_params, tok_s, mfu, val, rss, wall in rows:
        val_s = f"{val:.4f}" if val is not None else "–"
        print(
            f"| {label} | {n_params / 1e6:.2f}M | {tok_s:,.0f} | {mfu:.1%} | {val_s} | {rss / 2**20:,.0f} MiB | {wall:.0f} s |"
        )


def _model_overrides(cfg) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg.model).items() if v is not None and k != "preset"}


if __name__ == "__main__":
    main()
