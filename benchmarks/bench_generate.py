"""Generation benchmark: decode tokens/s with and without the KV cache (`make bench-generate`).

    .venv/bin/python benchmarks/bench_generate.py [--threads N] [--runs 3] [--quick] [--no-transformers]

1. Models with random weights (speed does not depend on them): nanoGPT's Shakespeare-char CPU shape
   ("char-tiny": gpt2, 4 layers, 4 heads, 128 dim, vocab 65, ~0.8M parameters) with block_size 1024 so a
   512-token prompt fits, and a ~10M-parameter gpt2 (6 layers, 6 heads, 384 dim).
2. For batch 1 and 8 and prompts of 16 and 512 tokens: decode tokens/s through `lmforge.infer.generate.stream`
   (sampling at temperature 1, EOS ignored), with the KV cache and without it (each step recomputes the
   whole sequence). Decode time runs from the first sampled token to the last, so the prompt's prefill is
   left out; tokens/s counts every row of the batch. Each figure is the median of `--runs` runs. Threads
   as `lmforge generate` picks them (`auto_threads`: one while parameters x batch is under 5M, else torch's
   default) unless `--threads` is given. Rows are measured one after another and printed as they come.
3. References in the same run: nanoGPT's sampler (`model.generate` of nanoGPT's model.py: no cache, crop to
   block_size 64, temperature 0.8, top-k 200, one token of prompt) on char-tiny with its block_size 64; and
   transformers' `GPT2LMHeadModel.generate` (greedy, its own KV cache) on the same weights, exported with
   `lmforge.model.hf_convert.to_hf_state_dict`, against our greedy decoding.
4. Prints a markdown table and checks the targets: batch 1 with the cache >= 5x nanoGPT's sampler; batch 8
   >= 4x the tokens/s of batch 1; time per token at 512 tokens of context within 30% of that at 16; ours at
   least as fast as transformers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.infer.generate import SamplingParams, auto_threads, stream  # noqa: E402
from lmforge.model.gpt import GPT, GPTConfig  # noqa: E402

VOCAB = 65
MODELS = {
    "char-tiny (0.8M)": dict(n_layer=4, n_head=4, n_embd=128),
    "gpt2 10M": dict(n_layer=6, n_head=6, n_embd=384),
}


def build(shape: dict, block_size: int = 1024) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=block_size, flavour="gpt2", **shape)).eval()


def prompts(batch: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    return torch.randint(0, VOCAB, (batch, length), generator=g).tolist()


def ours(model: GPT, batch: int, length: int, new: int, use_cache: bool, greedy: bool = False) -> float:
    """Decode tokens/s (all rows) of one `stream` call: first sampled token to last."""
    params = SamplingParams(max_new_tokens=new, temperature=0 if greedy else 1.0, seed=0, ignore_eos=True)
    stamps = [time.perf_counter() for e in stream(model, None, prompts(batch, length), params, use_cache=use_cache)
              if e.index == 0]  # fmt: skip
    return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


@torch.no_grad()
def nanogpt_sampler(model: GPT, new: int) -> float:
    """nanoGPT's GPT.generate, line for line (its forward computes the last position's logits only)."""
    idx = torch.zeros((1, 1), dtype=torch.long)
    block, temperature, top_k = model.config.block_size, 0.8, 200
    start = time.perf_counter()
    for _ in range(new):
        idx_cond = idx if idx.size(1) <= block else idx[:, -block:]
        logits = model.lm_head(model.forward_hidden(idx_cond)[:, [-1], :])
        logits = logits[:, -1, :] / temperature
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
    return new / (time.perf_counter() - start)


def to_transformers(model: GPT):  # -> transformers.GPT2LMHeadModel
    import transformers

    from lmforge.model.hf_convert import to_hf_state_dict

    c = model.config
    cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                  n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                  layer_norm_epsilon=c.norm_eps, bos_token_id=0, eos_token_id=0)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg)
    hf.load_state_dict(to_hf_state_dict("gpt2", model.state_dict(), c), strict=False)
    return hf.eval()


def transformers_rate(hf, batch: int, length: int, new: int) -> float:
    """Decode tokens/s of `generate(do_sample=False)`, timed like ours with a streamer (first to last token)."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    streamer = Stamps()
    ids = torch.tensor(prompts(batch, length))
    with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                    min_new_tokens=new, pad_token_id=0, streamer=streamer)  # fmt: skip
    stamps = streamer.times[1:]  # the first put is the prompt
    return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: as `lmforge generate` picks, "
                    "`auto_threads`: 1 when parameters x batch < 5M, else torch's default)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported)")
    ap.add_argument("--quick", action="store_true", help="fewer tokens per run (a smoke test)")
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers comparison")
    args = ap.parse_args()
    cores = torch.get_num_threads()
    new_cached = 64 if args.quick else 128
    new_uncached = {16: 16 if args.quick else 32, 512: 4 if args.quick else 8}

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    def median_rates(measures: dict[str, Callable[[], float]], threads: int) -> dict[str, float]:
        """Each figure's median over `--runs` rounds (after a warm-up round); a round measures every figure
        once, so a burst of load elsewhere spreads over the figures side by side instead of skewing one."""
        torch.set_num_threads(threads)
        samples: dict[str, list[float]] = {key: [] for key in measures}
        for round_ in range(args.runs + 1):
            for key, measure in measures.items():
                rate = measure()
                if round_:
                    samples[key].append(rate)
        torch.set_num_threads(cores)
        return {key: statistics.median(values) for key, values in samples.items()}

    print(f"torch {torch.__version__}, {cores} cores; decode tokens/s (all rows of a batch), median of {args.runs}")
    tiny = next(iter(MODELS))
    nano_model = build(MODELS[tiny], block_size=64)
    nano = median_rates({"nanogpt": lambda: nanogpt_sampler(nano_model, 200)}, 1)["nanogpt"]
    print(f"\nnanoGPT's sampler (no cache, block 64, char-tiny, batch 1, 1 thread): {nano:,.0f} tokens/s\n")
    print("| model | threads | batch | prompt | KV cache | no cache | cache speed-up | ms/step "
          "| ours greedy | transformers greedy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # One row at a time, printed as soon as it is measured (a run cut short still shows its rows).
    checks = []
    for name, shape in MODELS.items():
        model = build(shape)
        hf = None if args.no_transformers else to_transformers(model)
        r: dict[str, float] = {}
        for b in (1, 8):
            threads = args.threads or auto_threads(model.num_params(), b) or cores
            for n in (16, 512):
                measures: dict[str, Callable[[], float]] = {
                    "cache": partial(ours, model, b, n, new_cached, True),
                    "no-cache": partial(ours, model, b, n, new_uncached[n], False),
                }
                if hf is not None:
                    measures["greedy"] = partial(ours, model, b, n, new_cached, True, True)
                    measures["hf"] = partial(transformers_rate, hf, b, n, new_cached)
                rates = median_rates(measures, threads)
                r.update({f"{fig} b{b} p{n}": v for fig, v in rates.items()})
                cached, uncached = rates["cache"], rates["no-cache"]
                greedy, theirs = rates.get("greedy"), rates.get("hf")
                print(f"| {name} | {threads} | {b} | {n} | {fmt(cached)} | {fmt(uncached)} "
                      f"| {cached / uncached:.1f}x | {1000 * b / cached:.2f} | {fmt(greedy)} | {fmt(theirs)} |",
                      flush=True)  # fmt: skip
                if greedy is not None and theirs is not None:
                    checks.append((f"{name} b{b} p{n}: ours greedy >= transformers", greedy >= theirs,
                                   f"{greedy:,.0f} vs {theirs:,.0f}"))  # fmt: skip
        b1 = r["cache b1 p16"]
        if name == tiny:
            checks.insert(0, (f"{name} b1 with the cache >= 5x nanoGPT's sampler", b1 >= 5 * nano,
                              f"{b1:,.0f} vs {nano:,.0f} = {b1 / nano:.1f}x"))  # fmt: skip
        checks.append((f"{name}: batch 8 >= 4x batch 1 (prompt 16)", r["cache b8 p16"] >= 4 * b1,
                       f"{r['cache b8 p16'] / b1:.1f}x"))  # fmt: skip
        for b in (1, 8):
            ratio = r[f"cache b{b} p16"] / r[f"cache b{b} p512"]  # time per token at 512 over that at 16
            checks.append((f"{name} b{b}: time/token at 512 within 30% of 16", ratio <= 1.3, f"{ratio:.2f}x"))
    print()
    for what, ok, detail in checks:
        print(f"- [{'x' if ok else ' '}] {what}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
