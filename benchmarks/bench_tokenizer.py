"""Tokenizer stage against plain `tokenizers` calls, on the Chinese novels (红楼梦 + 西游记, ~4 MB).

    .venv/bin/python benchmarks/bench_tokenizer.py --shared ../shared/data

A: `lmforge.tokenizer.train.run_train` / `lmforge.tokenizer.encode.run_encode` on a prepared data
   directory holding the two novels (the whole stage: run directory, manifest, hashing, shards, meta.json).
B: the same work written directly against `tokenizers`: the same BPE settings trained with
   `Tokenizer.train(files)` on the same text as .txt files; encoding the two documents whole with
   `encode_batch_fast`, ids gathered into a uint16 array written to a .bin file (the same tokens: checked).

Runs alternate A, B, A, B, ... (so background load hits both alike); the median of --repeats runs each
is reported, with our overhead in percent (the median of the per-pair ratios) (train: seconds; encode: MB/s), for wall-clock time and for
CPU time (all threads of the process; steadier than wall time on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.config import Config  # noqa: E402
from lmforge.data.documents import JsonlZstWriter, split_path  # noqa: E402
from lmforge.tokenizer.encode import run_encode  # noqa: E402
from lmforge.tokenizer.train import run_train, special_tokens  # noqa: E402

NOVELS = ("chinese-text/hongloumeng.txt", "chinese-text/xiyouji.txt")


def direct_train(files: list[Path], cfg: Config, out: Path) -> None:
    tc = cfg.tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tc.vocab_size,
        min_frequency=tc.min_frequency,
        special_tokens=special_tokens(tc),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(f) for f in files], trainer=trainer)
    tokenizer.save(str(out))


def direct_encode(texts: list[str], tokenizer_json: Path, out: Path) -> None:
    """Whole documents through `encode_batch_fast`, EOS after each: exactly the tokens our stage writes
    (encoding line by line would be faster but gives other tokens wherever blank lines meet)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    eos = tokenizer.token_to_id("<|endoftext|>")
    parts = []
    for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False):
        parts.append(np.array(encoding.ids, dtype=np.uint16))
        parts.append(np.array([eos], dtype=np.uint16))
    np.concatenate(parts).tofile(out)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) spent in `fn()`."""
    cpu = time.process_time()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def row(name: str, a: list[tuple[float, float]], b: list[tuple[float, float]], n_bytes: int | None) -> str:
    """A table row: medians of wall and CPU time (or MB/s), and our overhead on each as the median of the
    per-pair ratios (run i of ours against run i of theirs, taken back to back: load hits both alike)."""
    cells = []
    for k in (0, 1):
        ma, mb = statistics.median(x[k] for x in a), statistics.median(x[k] for x in b)
        overhead = statistics.median(x[k] / y[k] for x, y in zip(a, b)) - 1
        shown = (
            (f"{ma:.2f} s", f"{mb:.2f} s")
            if n_bytes is None
            else (f"{n_bytes / 1e6 / ma:.2f} MB/s", f"{n_bytes / 1e6 / mb:.2f} MB/s")
        )
        cells += [*shown, f"{100 * overhead:+.1f}%"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shared", default=str(REPO.parent / "shared" / "data"), help="the shared data folder"
    )
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = [(Path(args.shared) / rel).read_text(encoding="utf-8") for rel in NOVELS]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    cfg = Config()
    cfg.tokenizer.vocab_size = args.vocab_size

    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "prepared"
        data.mkdir()
        with JsonlZstWriter(split_path(data, "train")) as writer:
            for text in texts:
                writer.write({"text": text})
        txt_files = []
        for rel, text in zip(NOVELS, texts):  # the same text (newlines as Python reads them) for B
            txt_files.append(tmp / Path(rel).name)
            txt_files[-1].write_text(text, encoding="utf-8", newline="\n")
        cfg.tokenizer.inputs = [str(data)]

        print(
            f"corpus: {n_bytes / 1e6:.2f} MB ({len(texts)} novels), vocab {args.vocab_size:,}, "
            f"{os.cpu_count()} CPUs, {args.repeats} runs each, alternating",
            flush=True,
        )
        train_a, train_b, enc_a, enc_b = [], [], [], []
        for i in range(args.repeats):
            train_a.append(timed(lambda i=i: run_train(cfg, out=tmp / f"tok-{i}")))
            train_b.append(timed(lambda i=i: direct_train(txt_files, cfg, tmp / f"direct-{i}.json")))
            print(
                f"  train run {i + 1}: lmforge {train_a[-1][0]:.2f}s, tokenizers {train_b[-1][0]:.2f}s",
                flush=True,
            )
        cfg.tokenizer.path = str(tmp / "tok-0")
        for i in range(args.repeats):
            enc_a.append(timed(lambda i=i: run_encode(cfg, data_dir=data, out=tmp / f"shards-{i}")))
            enc_b.append(
                timed(
                    lambda i=i: direct_encode(texts, tmp / "tok-0" / "tokenizer.json", tmp / f"d{i}.bin")
                )
            )
            print(
                f"  encode run {i + 1}: lmforge {enc_a[-1][0]:.2f}s, tokenizers {enc_b[-1][0]:.2f}s",
                flush=True,
            )
        ours = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in sorted((tmp / "shards-0").glob("train*.bin"))])
        if not np.array_equal(ours, np.fromfile(tmp / "d0.bin", dtype=np.uint16)):
            sys.exit("the two encodings differ: the comparison would not be of the same work")

    print()
    print(
        "| step | lmforge (wall) | tokenizers (wall) | overhead (wall) | lmforge (CPU) | tokenizers (CPU) | overhead (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(row(f"train BPE, vocab {args.vocab_size:,}", train_a, train_b, None))
    print(row("encode to shards", enc_a, enc_b, n_bytes))


if __name__ == "__main__":
    main()
