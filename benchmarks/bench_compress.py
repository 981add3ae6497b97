"""Compression benchmark (`make bench-compress`): int8 quantization of a GPT-2-small-shaped model, and
distillation and pruning of a small one, all through the `lmforge` CLI on tinyshakespeare.

    .venv/bin/python benchmarks/bench_compress.py --shared ../shared/data [--steps 40] [--no-onnx] [--quick]

1. Data: `lmforge prepare` tinyshakespeare (last 10% validation), a byte-level BPE tokenizer of 8,000 tokens
   and a char-level one, `lmforge tokenizer encode` for both.
2. Quantization: the `gpt2-124m` preset's shape (12 layers, 12 heads, 768 dim; with the 8k vocabulary that is
   ~92M parameters, GPT-2 small's 124M being mostly its 50k-token embedding) with block_size 128, pretrained
   `--steps` steps (batch 4) on the BPE shards, so its perplexity means something (it is far from converged).
   Then `lmforge quantize` with int8_weight_only and int8_dynamic (torchao), and, unless `--no-onnx`,
   `lmforge export --format onnx` + `lmforge quantize` of the export (onnxruntime dynamic int8). Each report
   holds the float model's and the int8 model's figures measured the same way: bytes of the weight files,
   perplexity on fixed validation windows, greedy decode tokens/s (batch 1, 16-token prompt, KV cache, the
   median of `--repeats` runs after a warm-up).
3. Distillation: a char-level teacher (nanoGPT's CPU shape, 4 layers x 128) pretrained, then a 2-layer x 64
   student distilled from it (alpha 0.9, T 1) and the same student trained the same steps on cross-entropy
   alone (alpha 0); KL(teacher || student) and perplexity on validation windows.
4. Pruning of that teacher: magnitude 50% (global) and structured (half the heads, half the MLP channels),
   each without and with recovery fine-tuning (plain, and distilled from the unpruned model).

Everything is written under bench-out/compress/ and reused when present (delete it to start over). Other
jobs share this machine's cores: the timings are medians, and each report's float and int8 figures are
measured one after the other in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.cli import main  # noqa: E402

OUT = REPO / "bench-out" / "compress"


def run(*argv: str) -> None:
    print("$ lmforge " + " ".join(argv), flush=True)
    if main(list(argv)) != 0:
        sys.exit(f"lmforge {argv[0]} failed")


def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "compress_report.json").read_text(encoding="utf-8"))


def done(run_dir: Path) -> bool:
    return (run_dir / "compress_report.json").is_file()


def data(shared: Path) -> tuple[Path, Path]:
    """(BPE shards, char shards) of tinyshakespeare."""
    prepared, bpe, char = OUT / "data", OUT / "shards-bpe", OUT / "shards-char"
    if not (prepared / "manifest.json").is_file():
        run("prepare", str(shared / "tinyshakespeare" / "input.txt"), "--out", str(prepared))
    for kind, shards, extra in (("bpe", bpe, ["tokenizer.vocab_size=8000"]), ("char", char, [])):
        tok = OUT / f"tok-{kind}"
        if not (tok / "tokenizer.json").is_file():
            run("tokenizer", "train", str(prepared), "--out", str(tok), f"tokenizer.kind={kind}", *extra)
        if not (shards / "meta.json").is_file():
            run("tokenizer", "encode", str(prepared), "--tokenizer", str(tok), "--out", str(shards))
    return bpe, char


THREADS: list[str] = []  # train.threads / compress.eval.threads for every command (--threads)


def pretrain(shards: Path, out: Path, options: list[str]) -> Path:
    if not (out / "checkpoints" / "latest").is_file():
        run("pretrain", str(shards), "--out", str(out), "train.sample_every_eval=false", "train.device=cpu", *options,
            *THREADS)  # fmt: skip
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------------------------------------------------
# 2. Quantization
# ---------------------------------------------------------------------------------------------------------


def quantization(bpe: Path, args: argparse.Namespace) -> None:
    big = pretrain(bpe, OUT / "gpt2-124m", [
        "model.preset=gpt2-124m", "model.block_size=128", "model.dropout=0.0", f"train.max_steps={args.steps}",
        "train.batch_size=4", "train.optim.lr=6e-4", "train.schedule.warmup_steps=5", "train.eval_every=1000000",
        "train.eval_batches=2", f"train.save_every={args.steps}", "train.log_every=5",
    ])  # fmt: skip
    measure = [f"compress.eval.windows={args.windows}", "compress.eval.batch_size=4",
               f"compress.eval.gen_tokens={args.gen_tokens}", f"compress.eval.repeats={args.repeats}", *THREADS]  # fmt: skip
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for method in ("int8_weight_only", "int8_dynamic"):
        out = OUT / f"q-{method}"
        if not done(out):
            run("quantize", str(big), "--method", method, "--out", str(out), *measure)
        r = report(out)
        rows.append((f"torchao {method}", r["before"], r["after"]))
    if args.onnx:
        export, out = OUT / "gpt2-124m-onnx", OUT / "q-onnx"
        if not (export / "model.onnx").is_file():
            run("export", str(big), "--format", "onnx", "--out", str(export))
        if not done(out):
            run("quantize", str(export), "--data", str(bpe), "--out", str(out), *measure)
        r = report(out)
        rows.append(("onnxruntime dynamic int8", r["before"], r["after"]))

    speeds = interleaved_decode(big, bpe, args)
    params = report(OUT / "q-int8_weight_only")["before"]["parameters"]
    print(f"\n### int8 quantization: gpt2-124m shape, {params / 1e6:.1f}M parameters, {args.steps} training steps\n")
    print("| engine / method | fp32 MiB | int8 MiB | int8/fp32 size | fp32 tok/s | int8 tok/s | speedup "
          "| fp32 ppl | int8 ppl | ppl change |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, before, after in rows:
        size = after["bytes_on_disk"] / before["bytes_on_disk"]
        speed = after["decode_tokens_per_s"] / before["decode_tokens_per_s"]
        ppl = after["perplexity"] / before["perplexity"] - 1
        print(f"| {name} | {before['bytes_on_disk'] / 2**20:.1f} | {after['bytes_on_disk'] / 2**20:.1f} | "
              f"{size:.3f} | {before['decode_tokens_per_s']:.2f} | {after['decode_tokens_per_s']:.2f} | "
              f"{speed:.2f}x | {before['perplexity']:.2f} | {after['perplexity']:.2f} | {ppl:+.2%} |")  # fmt: skip
    print(f"\nDecode again, the engines taking turns ({args.repeats * 2 + 1} rounds of {args.gen_tokens} greedy tokens "
          "after a 16-token prompt, batch 1; median tokens/s), so that load from other jobs hits them alike:\n")
    print("| engine | tokens/s | vs PyTorch fp32 | vs its own fp32 |")
    print("| --- | ---: | ---: | ---: |")
    for name, value in speeds.items():
        own = speeds["onnxruntime fp32"] if name.startswith("onnxruntime") else speeds["PyTorch fp32"]
        print(f"| {name} | {value:.2f} | {value / speeds['PyTorch fp32']:.2f}x | {value / own:.2f}x |")
    print("\nTargets: int8 file <= 30% of fp32, decode >= 1.5x (interleaved timing), perplexity within +2%:")
    engines = {"torchao int8_weight_only": ("torchao int8_weight_only", "PyTorch fp32"),
               "torchao int8_dynamic": ("torchao int8_dynamic", "PyTorch fp32"),
               "onnxruntime dynamic int8": ("onnxruntime int8", "onnxruntime fp32")}  # fmt: skip
    for name, before, after in rows:
        fast, base = engines[name]
        checks = [
            ("size", after["bytes_on_disk"] <= 0.30 * before["bytes_on_disk"]),
            ("decode", speeds[fast] >= 1.5 * speeds[base]),
            ("perplexity", after["perplexity"] <= 1.02 * before["perplexity"]),
        ]
        print(f"- {name}: " + ", ".join(f"{what} {'met' if ok else 'NOT met'}" for what, ok in checks))


def interleaved_decode(big: Path, shards: Path, args: argparse.Namespace) -> dict[str, float]:
    """Greedy decode tokens/s of every engine, timed in turns (each round times every engine once)."""
    import statistics
    import time

    import torch

    from lmforge.compress.compare import timing_prompt
    from lmforge.infer.generate import SamplingParams, generate
    from lmforge.infer.load import load_model
    from lmforge.train.data import TokenSplit, read_meta

    torch.set_num_threads(args.threads)
    prompt = timing_prompt(TokenSplit(read_meta(shards), "val"), 16, 128)
    params = SamplingParams(max_new_tokens=args.gen_tokens, temperature=0.0, ignore_eos=True)
    engines = {}
    for name, path in (("PyTorch fp32", big), ("torchao int8_weight_only", OUT / "q-int8_weight_only"),
                       ("torchao int8_dynamic", OUT / "q-int8_dynamic")):  # fmt: skip
        model = load_model(path).model
        engines[name] = lambda m=model: len(generate(m, None, [prompt], params)[0].token_ids)
    if args.onnx:
        from lmforge.export.onnx_runner import OnnxLM

        for name, path in (("onnxruntime fp32", OUT / "gpt2-124m-onnx"), ("onnxruntime int8", OUT / "q-onnx" / "onnx")):
            lm = OnnxLM(path, threads=args.threads)
            engines[name] = lambda lm=lm: sum(1 for _ in lm._token_steps(prompt, args.gen_tokens, 0.0, None, None, None))
    for decode in engines.values():
        decode()  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats * 2 + 1):
        for name, decode in engines.items():
            start = time.perf_counter()
            speeds[name].append(decode() / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in speeds.items()}


# ---------------------------------------------------------------------------------------------------------
# 3-4. Distillation and pruning on a small model
# ---------------------------------------------------------------------------------------------------------

SMALL_EVAL = ["compress.eval.windows=64", "compress.eval.gen_tokens=64", "compress.eval.repeats=5"]
STUDENT = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "train.batch_size=32",
           "train.optim.lr=3e-3", "train.schedule.warmup_steps=20", "train.sample_every_eval=false",
           "train.eval_batches=4"]  # fmt: skip


def distillation_and_pruning(char: Path, args: argparse.Namespace) -> None:
    teacher = pretrain(char, OUT / "small-teacher", [
        "model.preset=char-tiny", "model.dropout=0.0", f"train.max_steps={args.small_steps}", "train.batch_size=32",
        "train.optim.lr=2e-3", "train.schedule.warmup_steps=20", f"train.eval_every={args.small_steps}",
        "train.eval_batches=4", f"train.save_every={args.small_steps}",
    ])  # fmt: skip
    steps = args.small_steps // 2
    runs = {}
    for name, alpha in (("kd", "0.9"), ("ce", "0")):
        out = OUT / f"distill-{name}"
        if not done(out):
            run("distill", str(char), "--teacher", str(teacher), "--out", str(out), f"compress.distill.alpha={alpha}",
                "compress.distill.temperature=1", f"train.max_steps={steps}", f"train.eval_every={steps}",
                f"train.save_every={steps}", *STUDENT, *SMALL_EVAL, *THREADS)  # fmt: skip
        runs[name] = report(out)
    t = runs["kd"]["before"]
    print(f"\n### distillation: char-tiny teacher ({t['parameters'] / 1e6:.2f}M, {args.small_steps} steps) -> "
          f"2 x 64 student, {steps} steps\n")
    print("| model | parameters | val ppl | KL(teacher ‖ model) | decode tok/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| teacher | {t['parameters']:,} | {t['perplexity']:.3f} | 0 | {t['decode_tokens_per_s']:.0f} |")
    for name, label in (("kd", "student, distilled (alpha 0.9, T 1)"), ("ce", "student, cross-entropy only")):
        a = runs[name]["after"]
        print(f"| {label} | {a['parameters']:,} | {a['perplexity']:.3f} | {a['teacher_kl']:.4f} | "
              f"{a['decode_tokens_per_s']:.0f} |")

    recovery = ["train.batch_size=32", "train.optim.lr=1e-3", "train.schedule.warmup_steps=10",
                f"train.eval_every={args.recovery_steps}", "train.eval_batches=4", "train.sample_every_eval=false",
                f"train.save_every={args.recovery_steps}"]  # fmt: skip
    variants = [
        ("magnitude 50% global", ["--sparsity", "0.5"]),
        (f"magnitude 50% + {args.recovery_steps} recovery steps", ["--sparsity", "0.5", "--recovery-steps",
                                                                   str(args.recovery_steps), *recovery]),
        ("structured: 1/2 heads, 1/2 MLP", ["--method", "structured", "--heads", "0.5", "--mlp", "0.5"]),
        (f"structured + {args.recovery_steps} recovery steps", ["--method", "structured", "--heads", "0.5", "--mlp",
                                                               "0.5", "--recovery-steps", str(args.recovery_steps), *recovery]),
        (f"structured + {args.recovery_steps} distilled recovery steps", [
            "--method", "structured", "--heads", "0.5", "--mlp", "0.5", "--recovery-steps", str(args.recovery_steps),
            "compress.prune.recovery_alpha=0.9", *recovery]),
    ]  # fmt: skip
    print(f"\n### pruning: the char-tiny teacher ({args.small_steps} steps)\n")
    print("| variant | parameters | non-zero | MiB | val ppl | ppl change | decode tok/s | speedup |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for i, (label, options) in enumerate(variants):
        out = OUT / f"prune-{i}"
        if not done(out):
            run("prune", str(teacher), "--out", str(out), *options, *SMALL_EVAL, *THREADS)
        r = report(out)
        b, a = r["before"], r["after"]
        if base is None:
            base = b
            print(f"| unpruned | {b['parameters']:,} | {b['nonzero_parameters']:,} | {b['bytes_on_disk'] / 2**20:.2f} | "
                  f"{b['perplexity']:.3f} | - | {b['decode_tokens_per_s']:.0f} | - |")  # fmt: skip
        print(f"| {label} | {a['parameters']:,} | {a['nonzero_parameters']:,} | {a['bytes_on_disk'] / 2**20:.2f} | "
              f"{a['perplexity']:.3f} | {a['perplexity'] / b['perplexity'] - 1:+.1%} | {a['decode_tokens_per_s']:.0f} | "
              f"{a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x |")  # fmt: skip


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=30, help="pretraining steps (batch 4 x 128) of the ~92M model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (1: steadiest on a "
                        "machine shared with other jobs)")  # fmt: skip
    parser.add_argument("--windows", type=int, default=8, help="validation windows of 128 tokens")
    parser.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens decoded per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small-steps", type=int, default=600, help="pretraining steps of the small teacher")
    parser.add_argument("--recovery-steps", type=int, default=100)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime int8 row")
    parser.add_argument("--part", choices=["all", "quantize", "small"], default="all")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, short timings")
    args = parser.parse_args()
    global OUT
    if args.quick:
        OUT = OUT.with_name("compress-quick")
        args.steps, args.windows, args.gen_tokens, args.repeats = 2, 2, 4, 1
        args.small_steps, args.recovery_steps = 40, 10
    OUT.mkdir(parents=True, exist_ok=True)
    THREADS[:] = [f"train.threads={args.threads}", f"compress.eval.threads={args.threads}"]
    bpe, char = data(args.shared)
    if args.part in ("all", "quantize"):
        quantization(bpe, args)
    if args.part in ("all", "small"):
        distillation_and_pruning(char, args)


if __name__ == "__main__":
    main_cli()
