"""Fixtures for the tokenizer tests: slices of the shared corpora, prepared-data directories, and one
small byte-level BPE trained once per session."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lmforge.config import Config
from lmforge.data.documents import JsonlZstWriter, split_path


def write_prepared(root: Path, splits: dict[str, list[str]]) -> Path:
    """A prepared data directory: `<root>/<split>.jsonl.zst` with one record per text."""
    root.mkdir(parents=True, exist_ok=True)
    for split, texts in splits.items():
        with JsonlZstWriter(split_path(root, split)) as writer:
            for i, text in enumerate(texts):
                writer.write({"text": text, "source": f"test:{i}"})
    return root


def config(**tokenizer: object) -> Config:
    """Defaults with some `tokenizer.*` keys set."""
    cfg = Config()
    for key, value in tokenizer.items():
        setattr(cfg.tokenizer, key, value)
    return cfg


@pytest.fixture()
def prepared(tmp_path: Path) -> Callable[..., Path]:
    """`prepared(name, train=[...], val=[...])` writes a prepared data directory under tmp_path."""

    def make(name: str = "data", **splits: list[str]) -> Path:
        return write_prepared(tmp_path / name, splits)

    return make


@pytest.fixture()
def make_config() -> Callable[..., Config]:
    return config


@pytest.fixture(scope="session")
def corpora(shared_data: Path) -> dict[str, list[str]]:
    """Documents of every shared corpus the tokenizer must round-trip (novels sliced for speed)."""
    read = lambda rel: (shared_data / rel).read_text(encoding="utf-8")  # noqa: E731
    with open(shared_data / "sentiment/sst2/train.tsv", encoding="utf-8", newline="") as f:
        sst2 = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")][:3000]
    with open(
        shared_data / "sentiment/chnsenticorp/ChnSentiCorp_htl_all.csv", encoding="utf-8", newline=""
    ) as f:
        chnsenti = [row["review"] for row in csv.DictReader(f)][:1500]
    alpaca = json.loads(read("instructions/alpaca_zh_demo.json"))
    alpaca_zh = ["\n".join(r[k] for k in ("instruction", "input", "output") if r.get(k)) for r in alpaca]
    return {
        "tinyshakespeare": [read("tinyshakespeare/input.txt")],
        "hongloumeng": [read("chinese-text/hongloumeng.txt")[:150_000]],
        "xiyouji": [read("chinese-text/xiyouji.txt")[:150_000]],
        "sst2": sst2,
        "chnsenticorp": chnsenti,
        "alpaca_zh": alpaca_zh,
    }


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory: pytest.TempPathFactory, corpora: dict[str, list[str]]) -> Path:
    """A prepared directory mixing English and Chinese: slices of every corpus, train and val."""
    train = [
        corpora["tinyshakespeare"][0][:200_000],
        corpora["hongloumeng"][0][:100_000],
        corpora["xiyouji"][0][:100_000],
        *corpora["sst2"][:1000],
        *corpora["chnsenticorp"][:500],
        *corpora["alpaca_zh"][:300],
    ]
    val = [corpora["tinyshakespeare"][0][-20_000:], *corpora["chnsenticorp"][-50:]]
    return write_prepared(tmp_path_factory.mktemp("mixed"), {"train": train, "val": val})


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory, mixed_data: Path) -> Path:
    """A byte-level BPE with 1,000 tokens trained on `mixed_data` through `run_train`."""
    from lmforge.tokenizer.train import run_train

    cfg = config(inputs=[str(mixed_data)], vocab_size=1000)
    return run_train(cfg, out=tmp_path_factory.mktemp("bpe"))


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run `lmforge ARGS...` in-process."""
    from lmforge.cli import main

    def run(*args: str | Path) -> tuple[int, str]:
        """The exit status and the last non-empty line of stderr (progress bars use carriage returns)."""
        code = main([str(a) for a in args])
        lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
        return code, lines[-1] if lines else ""

    return run
