"""Serving benchmark: aggregate tokens/s and request latency of `lmforge serve` under 1, 4 and 16 concurrent
clients (`make bench-serve`).

    .venv/bin/python benchmarks/bench_serve.py [--repeats 3] [--threads 1] [--clients 1,4,16] [--quick]

1. A ~10M-parameter GPT-2-flavoured model (6 layers, 6 heads, 384 dim, block 256) with RANDOM weights
   (throughput does not depend on them) and a char-level tokenizer of tiny-shakespeare's characters, saved as
   an lmforge run directory in a temporary folder.
2. `lmforge serve` on it in its own process on 127.0.0.1 (a free port), so the clients do not share its
   interpreter; torch threads as `--threads` (default 1: the clients and the server share the cores).
3. For each client count: that many client threads, each sending non-streamed /v1/completions requests one
   after another (greedy, max_tokens 64, EOS ignored, so every request returns 64 tokens) with prompts from
   tiny-shakespeare cut to `--prompt-chars` characters (16; one token each), until the level's requests are
   done. Aggregate tokens/s = completion tokens / wall
   time of the level; latency = each request's round trip. Repeated `--repeats` times: the table shows the
   median tokens/s, p50/p95 latency over every request of the level, failed requests, and the mean running
   batch the engine decoded (its /metrics: decode-step rows / steps).
4. Target: 16 clients >= 4x the aggregate tokens/s of 1 client, with no failed request.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.config import TokenizerConfig  # noqa: E402
from lmforge.model.gpt import GPT, GPTConfig  # noqa: E402
from lmforge.tokenizer.train import char_tokenizer, save_tokenizer, special_tokens  # noqa: E402
from lmforge.train.checkpoint import save_checkpoint  # noqa: E402

NEW_TOKENS = 64
FALLBACK_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 50


def shakespeare(shared: Path) -> str:
    path = shared / "tinyshakespeare" / "input.txt"
    return path.read_text(encoding="utf-8") if path.is_file() else FALLBACK_TEXT


def write_model(run: Path, text: str) -> int:
    """The benchmark model as a run directory; returns its parameter count."""
    tc = TokenizerConfig(kind="char")
    tokenizer = char_tokenizer(sorted(set(text)), special_tokens(tc), tc.unk_token)
    save_tokenizer(tokenizer, run, tc, model_max_length=256)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=256, n_layer=6, n_head=6, n_embd=384,
                    flavour="gpt2")  # fmt: skip
    model = GPT(cfg)
    eos = tokenizer.token_to_id(tc.eos_token)
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), cfg.to_dict(), {"step": 1},
                    {"step": 1, "eos_id": eos}, tokenizer_file=run / "tokenizer.json")  # fmt: skip
    return model.num_params()


def prompts_from(text: str, chars: int, n: int = 64) -> list[str]:
    """`n` different lines of the text, each cut to `chars` characters (= tokens: the tokenizer is char-level)."""
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= chars]
    return [lines[(i * 97) % len(lines)][:chars] for i in range(n)]


def start_server(run: Path, threads: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEYS"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(run), "--port", "0", "--device", "cpu",
                             f"serve.threads={threads}", "serve.max_batch_size=16", "serve.max_queue=64",
                             "serve.dashboard=false"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"http://\S+", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its log pipe drained
    return proc, match.group(0)


def engine_rows(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = dict(re.findall(r"^(lmforge_engine_step(?:_rows)?s?_total) (\S+)$", text, flags=re.M))
    return float(values.get("lmforge_engine_steps_total", 0)), float(values.get("lmforge_engine_step_rows_total", 0))


def run_level(url: str, clients: int, requests: int, prompts: list[str]) -> dict:
    """`requests` completions from `clients` threads; wall time, tokens, latencies, failures."""
    latencies: list[float] = []
    tokens = [0]
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"model": "bench", "prompt": prompts[i % len(prompts)], "max_tokens": NEW_TOKENS,
                        "temperature": 0, "ignore_eos": True}  # fmt: skip
                started = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/completions", json=body)
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == NEW_TOKENS
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        tokens[0] += NEW_TOKENS
                    else:
                        failures[0] += 1

    steps0, rows0 = engine_rows(url)
    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    steps1, rows1 = engine_rows(url)
    mean_batch = (rows1 - rows0) / max(steps1 - steps0, 1)
    return {"tps": tokens[0] / wall, "latencies": latencies, "failures": failures[0], "batch": mean_batch}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("LMFORGE_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--repeats", type=int, default=3, help="runs per client count (median tokens/s reported)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--prompt-chars", type=int, default=16, help="prompt length in characters (= tokens)")
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    text = shakespeare(Path(args.shared))
    prompts = prompts_from(text, args.prompt_chars)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run = Path(tmp) / "bench"
        params = write_model(run, text)
        proc, url = start_server(run, args.threads)
        try:
            run_level(url, 1, 2, prompts)  # warm-up
            rows = []
            for clients in levels:
                per_client = 2 if args.quick else (6 if clients == 1 else 4)
                requests = max(clients * per_client, 6)
                results = [run_level(url, clients, requests, prompts) for _ in range(args.repeats)]
                rows.append((clients, requests, results))
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    base = statistics.median(r["tps"] for r in rows[0][2])
    print(f"\n### lmforge serve: {params / 1e6:.1f}M-parameter gpt2 (random weights), prompts of {args.prompt_chars} "
          f"tokens, {NEW_TOKENS} new tokens per request, greedy, EOS ignored; server torch threads {args.threads}, "
          f"{os.cpu_count()} cores; median of {args.repeats} runs\n")  # fmt: skip
    print("| clients | requests/run | tokens/s | vs 1 client | p50 latency (s) | p95 latency (s) | mean batch | failed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    failed_total = 0
    ratio_top = 0.0
    for clients, requests, results in rows:
        tps = statistics.median(r["tps"] for r in results)
        lat = [x for r in results for x in r["latencies"]]
        failed = sum(r["failures"] for r in results)
        failed_total += failed
        batch = statistics.median(r["batch"] for r in results)
        ratio_top = tps / base
        print(f"| {clients} | {requests} | {tps:.0f} | {tps / base:.2f}x | {percentile(lat, 0.5):.3f} | "
              f"{percentile(lat, 0.95):.3f} | {batch:.1f} | {failed} |")  # fmt: skip
    target = levels[-1] >= 16 and levels[0] == 1
    if target:
        verdict = "met" if ratio_top >= 4 and failed_total == 0 else "NOT met"
        print(f"\ntarget (16 clients >= 4x the tokens/s of 1 client, no failed request): {verdict} "
              f"({ratio_top:.2f}x, {failed_total} failed)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
