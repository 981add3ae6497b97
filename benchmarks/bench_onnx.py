"""ONNX benchmark: onnxruntime (fp32 and int8) against PyTorch eager on one model (`make bench-export`).

    .venv/bin/python benchmarks/bench_onnx.py [--threads 1,2] [--repeats 10] [--flavour gpt2|llama] [--quick]

1. A ~10M-parameter model with random weights (speed does not depend on them): 6 layers, 6 heads, 384 dim,
   block_size 256, vocabulary 65 (nanoGPT's Shakespeare-char "char-small" shape), gpt2 flavour by default.
2. Exported as `lmforge export --format onnx` writes it (`export_graphs`: model.onnx + model_with_past.onnx)
   and quantized to int8 (`quantize_onnx`: onnxruntime dynamic quantization, int8 per-channel weights).
3. Forward latency (logits of every position) for batch 1 x 128 and 8 x 128 tokens: PyTorch eager
   (`torch.inference_mode`), onnxruntime fp32 and int8 (CPU execution provider, all graph optimisations),
   at each thread count of `--threads` (both engines alike; default 1 and 2: on a busy machine PyTorch's
   OpenMP regions with 2 threads wait for both to be scheduled and slow down many times). Each figure is
   the median of `--repeats` timed calls after 3 warm-up calls; the engines are timed in turn within each
   repeat so that other jobs on the machine slow them alike (each timed call after an untimed one of the
   same engine).
4. Greedy decoding of 64 new tokens after a 16-token prompt (batch 1): `lmforge.infer.generate` with its
   KV cache against `OnnxLM` with the KV-cache graph (fp32, int8); tokens/s, median of a few runs.
5. File sizes of the fp32 and int8 exports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.export.onnx import export_graphs, graph_bytes, quantize_onnx  # noqa: E402
from lmforge.export.onnx_runner import OnnxLM  # noqa: E402
from lmforge.infer.generate import SamplingParams, generate  # noqa: E402
from lmforge.model.gpt import GPT, GPTConfig  # noqa: E402

VOCAB = 65
SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)


def build(flavour: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, flavour=flavour, **SHAPE)).eval()


def write_tokenizer(out: Path) -> None:
    """A character tokenizer over the 65 ids, so OnnxLM and generate can run text in and out."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = [chr(c) for c in range(ord("!"), ord("!") + VOCAB)]
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.save(str(out / "tokenizer.json"))


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each function. The engines take turns within each repeat, and each
    timed call follows an untimed one of the same engine: both keep worker threads spinning for a while
    after a call, which would otherwise steal the cores from the next engine's timed call."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_rows(model: GPT, fp32: OnnxLM, int8: OnnxLM, threads: int, repeats: int) -> list[str]:
    rows = []
    for batch in (1, 8):
        ids = np.random.default_rng(batch).integers(0, VOCAB, (batch, 128))
        ids_t = torch.from_numpy(ids)

        def eager(ids_t: torch.Tensor = ids_t) -> object:
            with torch.inference_mode():
                return model(ids_t)[0]

        ms = median_ms({"torch": eager, "fp32": lambda ids=ids: fp32.logits(ids),
                        "int8": lambda ids=ids: int8.logits(ids)}, repeats)  # fmt: skip
        rows.append(f"| {batch} x 128 | {threads} | {ms['torch']:.1f} | {ms['fp32']:.1f} | {ms['int8']:.1f} | "
                    f"{ms['torch'] / ms['fp32']:.2f}x | {ms['torch'] / ms['int8']:.2f}x |")
    return rows


def decode_rows(model: GPT, fp32: OnnxLM, int8: OnnxLM, threads: int, runs: int) -> list[str]:
    """Greedy decoding, batch 1: a 16-token prompt, 64 new tokens; tokens/s, median of `runs`."""
    prompt = "".join(chr(ord("!") + int(i)) for i in np.random.default_rng(0).integers(0, VOCAB, 16))
    assert fp32.tokenizer is not None
    sp = SamplingParams(max_new_tokens=64, temperature=0, ignore_eos=True)

    def tokens_per_s(fn: Callable[[], int]) -> float:
        fn()  # warm-up
        rates = []
        for _ in range(runs):
            t0 = time.perf_counter()
            n = fn()
            rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates)

    torch_rate = tokens_per_s(lambda: len(generate(model, fp32.tokenizer, [prompt], sp)[0].token_ids))
    fp32_rate = tokens_per_s(lambda: len(fp32.complete(prompt, 64, temperature=0).token_ids))
    int8_rate = tokens_per_s(lambda: len(int8.complete(prompt, 64, temperature=0).token_ids))
    return [f"| {threads} | {torch_rate:.0f} | {fp32_rate:.0f} | {int8_rate:.0f} | {fp32_rate / torch_rate:.2f}x | "
            f"{int8_rate / torch_rate:.2f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare at, both engines (default 1,2)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--flavour", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer decode runs (a smoke test)")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    thread_counts = [int(t) for t in args.threads.split(",")]

    model = build(args.flavour)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        full, _ = export_graphs(model, out, {"lmforge.block_size": str(SHAPE["block_size"]), "lmforge.eos_id": "-1"})
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        int8_path = quantize_onnx(full, out / "model.int8.onnx")
        quant_s = time.perf_counter() - t0
        write_tokenizer(out)
        sizes = {"fp32": graph_bytes(full), "int8": graph_bytes(int8_path)}

        print(f"# ONNX Runtime vs PyTorch eager: {args.flavour}, {model.num_params() / 1e6:.1f}M parameters "
              f"({SHAPE['n_layer']} layers, {SHAPE['n_head']} heads, {SHAPE['n_embd']} dim, vocab {VOCAB})\n")
        print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; export "
              f"{export_s:.1f} s, int8 quantization {quant_s:.1f} s; median of {repeats} calls\n")
        forward, decode = [], []
        for threads in thread_counts:
            torch.set_num_threads(threads)
            fp32, int8 = OnnxLM(full, threads=threads), OnnxLM(int8_path, threads=threads)
            forward += forward_rows(model, fp32, int8, threads, repeats)
            decode += decode_rows(model, fp32, int8, threads, 2 if args.quick else 5)
        print("| forward 128 tokens | threads | PyTorch eager ms | ORT fp32 ms | ORT int8 ms | fp32 speed-up | "
              "int8 speed-up |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(forward))
        print("\n| greedy decode, batch 1, 16 + 64 tokens | PyTorch tok/s (KV cache) | ORT fp32 tok/s (KV graph) | "
              "ORT int8 tok/s | fp32 vs PyTorch | int8 vs PyTorch |")
        print("|---|---|---|---|---|---|")
        print("\n".join(f"| threads {row[2:]}" for row in decode))
        print("\n| file | bytes | MB | vs fp32 |")
        print("|---|---|---|---|")
        for name, size in sizes.items():
            print(f"| model{'.int8' if name == 'int8' else ''}.onnx + weights | {size:,} | {size / 1e6:.1f} | "
                  f"{size / sizes['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
