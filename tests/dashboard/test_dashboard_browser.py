"""The dashboard page in a real browser against a real server: runs, a live curve growing while its
metrics.jsonl is written, comparison, an evaluation report, the explain view, the playground without a model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import screenshot
from dash_helpers import ServerThread, eval_event, get, train_event, unfinished_run

from lmforge.train.metrics import MetricsLogger


def train_steps(run: Path) -> int:
    return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["event"] == "train")


@pytest.fixture(scope="module")
def live(runs: Path) -> Iterator[tuple[Path, MetricsLogger]]:
    """A run that is training: no manifest yet, its metrics logger still open."""
    run_dir, metrics = unfinished_run(runs, "live", steps=40)
    yield run_dir, metrics
    metrics.close()


def series(page: Any, run: str, metric: str) -> Any:
    return page.locator(f'polyline.series[data-run="{run}"][data-metric="{metric}"]').first


def test_live_curve_grows_while_the_run_trains(page: Any, dashboard: ServerThread,
                                               live: tuple[Path, MetricsLogger]) -> None:  # fmt: skip
    run_dir, metrics = live
    page.goto(f"{dashboard.url}/#/run/live")
    loss = series(page, "live", "loss")
    loss.wait_for()
    assert loss.get_attribute("data-points") == str(train_steps(run_dir)) == "4"
    assert page.locator('li.run-item[data-name="live"] .badge').inner_text() == "running"
    for step in range(50, 90, 10):
        metrics.log(train_event(step, 2))
    metrics.log(eval_event(80, 2))
    page.wait_for_function(
        """([n]) => document.querySelector('polyline.series[data-run="live"][data-metric="loss"]')?.dataset.points === n""",
        arg=[str(train_steps(run_dir))],
    )  # fmt: skip
    assert series(page, "live", "val_loss").get_attribute("data-points") == "1"
    assert series(page, "live", "lr").get_attribute("data-points") == "8"
    page.wait_for_function("() => document.querySelector('.figures tr[data-key=step] td')?.textContent === '80'")
    screenshot(page, "live-run")


def test_runs_table_shows_each_status(page: Any, dashboard: ServerThread) -> None:
    page.goto(f"{dashboard.url}/#/runs")
    page.locator(".runs-table tbody tr").first.wait_for()
    _, body = get(f"{dashboard.url}/api/runs")
    expected = {r["name"]: r["status"] for r in body["runs"]}
    shown = {row.get_attribute("data-name"): row.locator(".badge").inner_text()
             for row in page.locator(".runs-table tbody tr").all()}  # fmt: skip
    assert shown == expected
    assert {"finished", "failed", "interrupted"} <= set(shown.values())
    screenshot(page, "runs")


def test_two_runs_overlaid(page: Any, dashboard: ServerThread, runs: Path) -> None:
    page.goto(f"{dashboard.url}/#/runs")
    for name in ("pretrain-a", "pretrain-b"):
        page.locator(f'li.run-item[data-name="{name}"] input.compare-box').check()
    page.locator("#compare-button").click()
    box = page.locator('.chart-box[data-chart="loss"]')
    box.locator("polyline.series").nth(1).wait_for()
    drawn = {line.get_attribute("data-run"): int(line.get_attribute("data-points"))
             for line in box.locator("polyline.series").all()}  # fmt: skip
    assert drawn == {name: train_steps(runs / name) for name in ("pretrain-a", "pretrain-b")}
    assert page.locator(".compare-figures thead th").all_inner_texts()[1:] == ["pretrain-a", "pretrain-b"]
    screenshot(page, "compare")


def test_evaluation_report_with_confusion_matrix(page: Any, dashboard: ServerThread, report: dict) -> None:
    page.goto(f"{dashboard.url}/#/run/eval")
    page.locator("table.confusion").wait_for()
    task = report["tasks"]["classify"]
    cells = page.locator("table.confusion tbody tr").all()
    matrix = [[int(td.get_attribute("data-count")) for td in row.locator("td").all()] for row in cells]
    assert matrix == task["details"]["confusion_matrix"]
    assert page.locator("table.confusion thead th").all_inner_texts()[1:] == task["details"]["labels"]
    assert page.locator("table.worst tbody tr").count() == len(task["worst"])
    screenshot(page, "report")


def test_explain_view(page: Any, dashboard: ServerThread) -> None:
    page.goto(f"{dashboard.url}/#/explain")
    page.locator("#explain-model").select_option("cls")
    assert page.locator('.explain-method[value="logit_lens"]').is_disabled()
    page.locator("#explain-text").fill("abxcdef")
    page.locator("#explain-button").click()
    tokens = page.locator('.attr[data-method="integrated_gradients"] .tok')
    tokens.first.wait_for()
    assert "".join(tokens.all_inner_texts()) == "abxcdef<|endoftext|>"
    assert page.locator('.attr[data-method="occlusion"] .tok').count() == 8
    assert page.locator("canvas.attention-map").get_attribute("data-tokens") == "8"
    assert page.locator(".prediction .prob-row").count() == 2
    screenshot(page, "explain-classifier")

    page.locator("#explain-model").select_option("lm")
    page.locator("#explain-text").fill("To be")
    page.locator("#explain-button").click()
    page.locator("table.lens tbody tr").first.wait_for()
    _, models = get(f"{dashboard.url}/api/explain/models")
    assert page.locator("table.lens tbody tr").count() == 3  # the embeddings and 2 layers
    page.locator(".attention-layer").select_option("1")
    assert page.locator("canvas.attention-map").get_attribute("data-layer") == "1"
    screenshot(page, "explain-lm")
    assert {m["name"] for m in models["models"]} == {"lm", "cls"}


def test_playground_says_no_model_is_served(page: Any, dashboard: ServerThread) -> None:
    page.goto(f"{dashboard.url}/#/playground")
    assert "No model is served here." in page.locator("#no-model").inner_text()
