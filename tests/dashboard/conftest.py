"""A runs directory as real stages leave it: finished, failed, killed and nested runs, an evaluation report,
a tiny language model and a classifier fine-tuned from it (through the CLI), served by a real uvicorn; and
a headless Chromium driven by Playwright (tests skip, saying why, only when no Chromium can be found;
a page fails its test on any JavaScript error)."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))

from browser import find_chromium
from dash_helpers import ServerThread, failed_run, finished_training_run, unfinished_run
from ft_helpers import FAST, make_base, sentiment_records, write_jsonl

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.runs import start_run
from lmforge.serve.dashboard import create_dashboard_app


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    finished_training_run(root, "pretrain-a", steps=200, seed=0)
    finished_training_run(root, "pretrain-b", steps=150, seed=1)
    finished_training_run(root, "group/nested", steps=50, seed=2)
    failed_run(root, "crashed")
    unfinished_run(root, "killed", steps=40, age_seconds=3600)

    with start_run("pretrain", load_config(None, []), root / "lm") as run:  # a tiny LM with a chat template
        make_base(run.dir)
        run.add_output(run.dir / "checkpoints")
    data = write_jsonl(root.parent / "planted.jsonl", sentiment_records(64))
    assert main(["finetune", "--base", str(root / "lm"), str(data), "--out", str(root / "cls"), *FAST,
                 "--task", "classify", "train.max_steps=10", "train.optim.lr=3e-3"]) == 0  # fmt: skip

    rng = random.Random(0)
    gold = [{"text": f"review {i}", "label": rng.choice(["neg", "neu", "pos"])} for i in range(30)]
    predicted = [r["label"] if rng.random() < 0.7 else rng.choice(["neg", "neu", "pos"]) for r in gold]
    gold_file = write_jsonl(root.parent / "gold.jsonl", gold)
    (root.parent / "predicted.txt").write_text("".join(p + "\n" for p in predicted), encoding="utf-8")
    assert main(["evaluate", "--task", "classify", f"eval.classify.data={gold_file}",
                 f"eval.classify.predictions={root.parent / 'predicted.txt'}", "--out", str(root / "eval")]) == 0
    return root


@pytest.fixture(scope="session")
def report(runs: Path) -> dict:
    return json.loads((runs / "eval" / "report.json").read_text())


@pytest.fixture(scope="module")
def dashboard(runs: Path) -> Iterator[ServerThread]:
    """The dashboard alone (`lmforge dashboard`), no model server behind the playground."""
    with ServerThread(create_dashboard_app(runs)) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (/usr/bin/chromium; `make test` installs it with apt-get where it can, "
                    "or set LMFORGE_CHROMIUM)")  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses its sandbox when run as root (as in containers and CI).
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    # Console errors, except the browser's own note on an HTTP error status the page handles (a 404 from
    # /v1/models when no model is served, a 400 from a refused request).
    page.on("console", lambda msg: errors.append(f"console: {msg.text}")
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)  # fmt: skip
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not errors, errors
