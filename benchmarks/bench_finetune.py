"""Fine-tuning benchmark: SST-2 sentiment from scratch on this machine.

    .venv/bin/python benchmarks/bench_finetune.py --shared ../shared/data --pretrain-seconds 600 \\
        --finetune-seconds 600

1. `lmforge prepare` the SST-2 training sentences, train a 4,096-token BPE tokenizer on them, encode them.
2. `lmforge pretrain` a small GPT (configs/sst2-classify.yaml: 4 layers, 128 wide, 64-token context) for
   `--pretrain-seconds` of training.
3. `lmforge finetune --task classify` over it for `--finetune-seconds`: best checkpoint by macro-F1 on a
   held-out 5% of train (the dev set is not used for selection).
4. Loads the best classifier with `load_classifier` and scores SST-2 dev (872 sentences): accuracy and
   macro-F1. With `--baseline`, the same fine-tuning from a randomly initialised model of the same shape
   (pretraining's contribution). Prints a markdown table; `--out` keeps the runs (default: a temp dir).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "sst2-classify.yaml"


def lmforge(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lmforge.cli", *args]
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    print(f"  {' '.join(args[:2])}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)


def random_base(pretrain_run: Path, out: Path) -> Path:
    """A checkpoint of the pretrained model's shape and tokenizer with freshly initialised weights."""
    import shutil

    import torch

    from lmforge.model.gpt import GPT, GPTConfig
    from lmforge.train import checkpoint as ckpt

    source = ckpt.resolve_checkpoint(pretrain_run)
    config = ckpt.read_json(source, "model_config.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(config))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        for d in (source, pretrain_run):
            if (d / name).is_file():
                shutil.copyfile(d / name, out / name)
                break
    info = ckpt.read_json(source, "info.json")
    ckpt.save_checkpoint(out / "checkpoints", 0, model.state_dict(), config, {}, {"eos_id": info.get("eos_id")},
                         out / "tokenizer.json")  # fmt: skip
    return out


def score_dev(run: Path, dev: Path) -> dict[str, float]:
    import torch

    from lmforge.eval.metrics import classification_metrics
    from lmforge.finetune import load_classifier
    from lmforge.finetune.classify import encode_for_classifier

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, tokenizer, labels = load_classifier(run)
    with open(dev, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    probs = model.predict(encode_for_classifier(model, tokenizer, [r["sentence"] for r in rows]), batch_size=64)
    preds = [labels[i] for i in probs.argmax(-1).tolist()]
    m = classification_metrics([r["label"].strip() for r in rows], preds, labels)
    return {"n": len(rows), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pretrain-seconds", type=float, default=600)
    parser.add_argument("--finetune-seconds", type=float, default=600)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--baseline", action="store_true", help="also fine-tune a randomly initialised model")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    train_tsv = (args.shared / "sentiment" / "sst2" / "train.tsv").resolve()
    dev_tsv = (args.shared / "sentiment" / "sst2" / "dev.tsv").resolve()
    if not train_tsv.is_file():
        sys.exit(f"SST-2 not found: {train_tsv}")
    work = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    c, t = ["-c", str(CONFIG)], args.threads

    lmforge("prepare", str(train_tsv), *c, "-o", str(work / "data"), threads=t)
    lmforge("tokenizer", "train", str(work / "data"), *c, "-o", str(work / "tok"), threads=t)
    lmforge("tokenizer", "encode", str(work / "data"), "-t", str(work / "tok"), *c, "-o", str(work / "shards"),
            threads=t)  # fmt: skip
    pretrain = ["train.max_steps=1000000", f"train.max_seconds={args.pretrain_seconds}", "train.optim.lr=2e-3",
                "train.eval_every=500", "train.save_every=1000000", "train.early_stopping_patience=null",
                "train.schedule.name=constant", f"train.threads={t}"]  # fmt: skip
    lmforge("pretrain", str(work / "shards"), *c, "-o", str(work / "pretrain"), *pretrain, threads=t)
    pre_metrics = [json.loads(line) for line in (work / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    pre_val = [r["val_loss"] for r in pre_metrics if r["event"] == "eval"][-1]

    finetune = ["--task", "classify", "train.max_steps=1000000", f"train.max_seconds={args.finetune_seconds}",
                f"finetune.data={train_tsv}", f"train.threads={t}", "train.schedule.name=constant",
                "train.early_stopping_patience=null"]  # fmt: skip
    bases = {"pretrained": work / "pretrain"}
    if args.baseline:
        bases["random init"] = random_base(work / "pretrain", work / "random-base")
    rows = []
    for name, base in bases.items():
        out = work / f"classify-{name.replace(' ', '-')}"
        lmforge("finetune", *c, "--base", str(base), "-o", str(out), *finetune, threads=t)
        report = json.loads((out / "finetune_report.json").read_text())
        dev = score_dev(out, dev_tsv)
        rows.append((name, report, dev))

    print(f"\nSST-2, {args.pretrain_seconds:.0f}s pretraining (val loss {pre_val:.3f}) + "
          f"{args.finetune_seconds:.0f}s fine-tuning, {t} threads; runs in {work}\n")  # fmt: skip
    print("| base | steps | held-out macro-F1 (best) | dev accuracy | dev macro-F1 |")
    print("|---|---:|---:|---:|---:|")
    for name, report, dev in rows:
        print(f"| {name} | {report['steps']} (best {report['best_step']}) | {report['best']:.4f} | "
              f"{dev['accuracy']:.4f} | {dev['macro_f1']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
