"""Data-preparation benchmarks: prepare throughput, and near-duplicate recall/precision on a planted set.

    .venv/bin/python benchmarks/bench_data.py --shared ../shared/data

1. Throughput (MB/s of input bytes, median of --repeats runs) of `run_prepare` with the default steps on
   the Chinese novels and on SST-2 train (text_field=sentence), output to a temporary directory.
2. Near-duplicates: 2,000 SST-2 train sentences of 15+ words that share no word 4-gram with each other
   (so none is a copy or sub-phrase of another), plus 300 planted copies of randomly chosen ones with
   about 5% of their characters edited (seeded random substitutions, insertions, deletions), placed
   after all originals. The near-dedup step with the default DedupConfig runs over the 2,300; recall =
   planted copies removed / 300, precision = removed that are planted / removed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lmforge.config import DedupConfig, load_config
from lmforge.data.dedup import NearDedup
from lmforge.data.prepare import run_prepare
from lmforge.data.steps import Doc


def throughput(inputs: list[Path], overrides: dict[str, str], repeats: int) -> tuple[float, float, dict]:
    """(median wall seconds, median CPU seconds, last report) of the whole prepare stage.

    CPU time is printed too because wall time on a shared machine measures the neighbours as well.
    """
    walls, cpus = [], []
    report: dict = {}
    for _ in range(repeats):
        cfg = load_config(None, [f"{key}={value}" for key, value in overrides.items()])
        cfg.data.inputs = [str(p) for p in inputs]
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            t0, c0 = time.perf_counter(), time.process_time()
            report = run_prepare(cfg, out=out)  # its table goes to the StringIO, not between our rows
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), report


def sst2_sentences(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[0].strip() for r in rows[1:] if r and len(r[0].split()) >= 15]


def distinct_sample(sentences: list[str], n: int, rng: random.Random) -> list[str]:
    """n sentences sharing no word 4-gram with one another: no copies, no sub-phrases, no near-copies."""
    pool = sentences[:]
    rng.shuffle(pool)
    seen: set[tuple[str, ...]] = set()
    chosen = []
    for s in pool:
        words = s.split()
        grams = {tuple(words[i:i + 4]) for i in range(len(words) - 3)}
        if grams & seen:
            continue
        seen |= grams
        chosen.append(s)
        if len(chosen) == n:
            break
    return chosen


def perturb(text: str, rate: float, rng: random.Random) -> str:
    """Edit about `rate` of the characters: random substitutions, insertions and deletions."""
    chars = list(text)
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    for _ in range(max(1, round(rate * len(chars)))):
        op = rng.choice("sid")
        i = rng.randrange(len(chars))
        if op == "s":
            chars[i] = rng.choice(alphabet.replace(chars[i], ""))
        elif op == "i":
            chars.insert(i, rng.choice(alphabet))
        elif len(chars) > 1:
            del chars[i]
    return "".join(chars)


def near_dup_benchmark(sst2: Path, seed: int = 0, cfg: DedupConfig | None = None) -> dict:
    rng = random.Random(seed)
    originals = distinct_sample(sst2_sentences(sst2), 2000, rng)
    if len(originals) < 2000:
        raise SystemExit(f"only {len(originals)} distinct sentences of 15+ words in {sst2}")
    planted_from = rng.sample(range(len(originals)), 300)
    copies = [perturb(originals[i], 0.05, rng) for i in planted_from]
    docs = [Doc(t, f"orig:{i}") for i, t in enumerate(originals)]
    docs += [Doc(t, f"copy:{i}") for i, t in zip(planted_from, copies)]
    cfg = cfg or DedupConfig()
    step = NearDedup(cfg, max_examples=0)
    t0 = time.perf_counter()
    kept = {d.source for d in step(docs)}
    seconds = time.perf_counter() - t0
    removed = {d.source for d in docs} - kept
    planted_removed = sum(s.startswith("copy:") for s in removed)
    return {
        "docs": len(docs),
        "removed": len(removed),
        "recall": planted_removed / len(copies),
        "precision": planted_removed / len(removed) if removed else 1.0,
        "seconds": seconds,
        "shingle": f"{cfg.shingle} {cfg.shingle_size}",
        "num_perm": cfg.num_perm,
        "bands": cfg.bands,
        "threshold": cfg.threshold,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default="../shared/data", help="the shared data directory")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shared = Path(args.shared)
    novels = sorted((shared / "chinese-text").glob("*.txt"))
    sst2 = shared / "sentiment" / "sst2" / "train.tsv"
    if not novels or not sst2.is_file():
        print(f"shared data not found under {shared}", file=sys.stderr)
        return 2

    rows = []
    for name, inputs, overrides in [
        ("Chinese novels (2 files)", novels, {}),
        ("SST-2 train.tsv", [sst2], {"data.reader.text_field": "sentence"}),
    ]:
        wall, cpu, report = throughput(inputs, overrides, args.repeats)
        mb = sum(p.stat().st_size for p in inputs) / 1e6
        rows.append((name, f"{mb:.2f}", f"{report['docs_in']:,}", f"{report['steps'][-1]['docs_in']:,}",
                     f"{wall:.2f}", f"{mb / wall:.2f}", f"{cpu:.2f}", f"{mb / cpu:.2f}"))
    print(f"## prepare throughput (default steps, median of {args.repeats} runs, {os.cpu_count()} CPUs)\n")
    print("| input | MB | docs in | docs kept | wall s | MB/s (wall) | CPU s | MB/s (CPU) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(r) + " |")

    nd = near_dup_benchmark(sst2)
    print("\n## near-duplicate detection (2,000 distinct SST-2 sentences + 300 planted copies, ~5% chars edited)\n")
    print("| shingles | num_perm | bands | threshold | removed | recall | precision | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {nd['shingle']}-grams | {nd['num_perm']} | {nd['bands']} | {nd['threshold']} | "
          f"{nd['removed']} | {nd['recall']:.3f} | {nd['precision']:.3f} | {nd['seconds']:.2f} |")
    ok = nd["recall"] >= 0.95 and nd["precision"] >= 0.99
    print(f"\ntargets recall >= 0.95 and precision >= 0.99: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
