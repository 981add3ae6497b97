"""The dashboard's JSON API over a real runs directory, through a real uvicorn server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

from dash_helpers import ServerThread, error_message, eval_event, get, post, train_event, unfinished_run

from lmforge.serve.dashboard import create_dashboard_app


def runs_by_name(server: ServerThread) -> dict[str, dict]:
    status, body = get(f"{server.url}/api/runs")
    assert status == 200
    return {r["name"]: r for r in body["runs"]}


def test_status_is_derived_from_manifest_and_activity(dashboard: ServerThread, runs: Path) -> None:
    found = runs_by_name(dashboard)
    manifests = {name: json.loads((runs / name / "manifest.json").read_text())
                 for name in found if (runs / name / "manifest.json").is_file()}  # fmt: skip
    for name, manifest in manifests.items():
        assert found[name]["status"] == manifest["status"], name
        assert found[name]["stage"] == manifest["stage"]
    assert found["crashed"]["status"] == "failed"
    assert found["pretrain-a"]["status"] == "finished" and found["cls"]["stage"] == "finetune"
    assert found["killed"]["status"] == "interrupted" and found["killed"]["stage"] == "pretrain"
    assert "group/nested" in found  # nested one level down
    assert not any(n.endswith(("checkpoints", "logs", "tb")) for n in found)


def test_running_until_quiet_then_interrupted(runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir, metrics = unfinished_run(root, "now", steps=20)
    with ServerThread(create_dashboard_app(root, stale_seconds=60)) as server:
        assert runs_by_name(server)["now"]["status"] == "running"
        metrics.close()
        old = os.path.getmtime(run_dir) - 120
        for path in [run_dir, *run_dir.rglob("*")]:
            os.utime(path, (old, old))
        assert runs_by_name(server)["now"]["status"] == "interrupted"


def test_final_figures_come_from_the_last_events(dashboard: ServerThread, runs: Path, report: dict) -> None:
    found = runs_by_name(dashboard)
    records = [json.loads(line) for line in (runs / "pretrain-a" / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if r["event"] == "train"][-1]
    last_eval = [r for r in records if r["event"] == "eval"][-1]
    figures = found["pretrain-a"]["figures"]
    assert figures["step"] == last_train["step"] and figures["loss"] == last_train["loss"]
    assert figures["val_loss"] == last_eval["val_loss"] and figures["stop_reason"] == "max_steps"
    accuracy = report["tasks"]["classify"]["metrics"]["accuracy"]
    assert found["eval"]["figures"]["classify.accuracy"] == accuracy


def test_lineage_from_config_and_inputs(dashboard: ServerThread) -> None:
    found = runs_by_name(dashboard)
    assert found["cls"]["parents"] == ["lm"]  # finetune.base in its config
    assert "cls" in found["lm"]["children"]
    assert found["pretrain-a"]["parents"] == [] and found["eval"]["parents"] == []
    assert found["cls"]["model"] == "classifier" and found["lm"]["model"] == "lm"
    assert found["pretrain-a"]["model"] is None


def test_run_detail_has_config_manifest_report(dashboard: ServerThread, runs: Path, report: dict) -> None:
    status, detail = get(f"{dashboard.url}/api/run?name=eval")
    assert status == 200
    assert detail["config"] == (runs / "eval" / "config.yaml").read_text()
    assert detail["manifest"]["outputs"] and detail["report"]["tasks"] == report["tasks"]
    assert "confusion_classify.png" in detail["files"] and "logs/evaluate.log" in detail["files"]
    status, png = get(f"{dashboard.url}/api/file?name=eval&path=confusion_classify.png")
    assert status == 200 and png == (runs / "eval" / "confusion_classify.png").read_bytes()
    status, detail = get(f"{dashboard.url}/api/run?name={quote('group/nested')}")
    assert status == 200 and detail["samples"][-1]["text"] == "To be, or not"


def test_metrics_follow_the_file_by_offset(runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir, metrics = unfinished_run(root, "live", steps=30)
    with ServerThread(create_dashboard_app(root)) as server:
        url = f"{server.url}/api/metrics?name=live"
        _, first = get(url)
        assert [r["step"] for r in first["records"]] == [10, 20, 30] and not first["reset"]
        metrics.log(train_event(40))
        metrics.log(eval_event(40))
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write('{"event": "train", "step": 5')  # a line still being written
            f.flush()
            _, second = get(f"{url}&offset={first['offset']}&file={first['file']}")
            assert [(r["event"], r["step"]) for r in second["records"]] == [("train", 40), ("eval", 40)]
            f.write('0, "loss": 1.5}\n')
        _, third = get(f"{url}&offset={second['offset']}&file={second['file']}")
        assert third["records"] == [{"event": "train", "step": 50, "loss": 1.5}]
        metrics.close()
        # Resumed from a checkpoint: the logger rewrites the file (a new one), the page must start over.
        shutil.copy(run_dir / "metrics.jsonl", tmp_path / "copy.jsonl")
        os.replace(tmp_path / "copy.jsonl", run_dir / "metrics.jsonl")
        _, fourth = get(f"{url}&offset={third['offset']}&file={third['file']}")
        assert fourth["reset"] and len(fourth["records"]) == 6


def test_bad_names_and_paths_are_refused(dashboard: ServerThread, runs: Path) -> None:
    for name in ["nope", "../runs", "/etc", "pretrain-a/../crashed", "pretrain-a/checkpoints", ""]:
        status, body = get(f"{dashboard.url}/api/run?name={quote(name)}")
        assert status == 404, name
        assert "no run named" in error_message(body)
    for path in ["../pretrain-a/config.yaml", "/etc/passwd", "checkpoints", "nothing.png"]:
        status, body = get(f"{dashboard.url}/api/file?name=eval&path={quote(path)}")
        assert status == 404, path
    status, _ = get(f"{dashboard.url}/api/metrics?name=eval&offset=-1")
    assert status == 422
    status, _ = get(f"{dashboard.url}/static/../dashboard.py")
    assert status == 404


def test_page_and_static_files(dashboard: ServerThread) -> None:
    for path in ["/", "/dashboard"]:
        status, page = get(dashboard.url + path)
        assert status == 200 and b'src="static/dashboard.js"' in page
    static = Path(__file__).resolve().parents[2] / "lmforge" / "serve" / "static"
    for file in sorted(static.iterdir()):
        status, body = get(f"{dashboard.url}/static/{file.name}")
        assert status == 200 and body == file.read_bytes(), file.name


def test_explain_endpoint(dashboard: ServerThread) -> None:
    status, models = get(f"{dashboard.url}/api/explain/models")
    assert status == 200 and {(m["name"], m["kind"]) for m in models["models"]} == {("lm", "lm"), ("cls", "classifier")}
    status, result = post(f"{dashboard.url}/api/explain", {"name": "cls", "text": "abxcd", "methods": ["attribution"]})
    assert status == 200 and result["model"]["kind"] == "classifier"
    assert [t["text"] for t in result["tokens"][:5]] == list("abxcd") and result["tokens"][-1]["special"]
    assert len(result["attribution"]["occlusion"]["scores"]) == len(result["tokens"])
    status, result = post(f"{dashboard.url}/api/explain", {"name": "lm", "text": "hello", "methods": ["logit_lens"]})
    assert status == 200 and len(result["logit_lens"]["top"]) == result["model"]["layers"] + 1
    cases = [
        ({"name": "cls", "text": "ab", "methods": ["logit_lens"]}, 400, "logit_lens needs a language model"),
        ({"name": "cls", "text": "ab", "methods": ["nope"]}, 400, "unknown method 'nope'"),
        ({"name": "cls", "text": ""}, 400, "non-empty 'text'"),
        ({"name": "pretrain-a", "text": "ab"}, 400, "no usable checkpoint"),
        ({"name": "../x", "text": "ab"}, 404, "no run named"),
        ({"name": "cls", "text": "ab", "target": "great"}, 400, "'great' is not a class"),
    ]
    for payload, code, message in cases:
        status, body = post(f"{dashboard.url}/api/explain", payload)
        assert status == code and message in error_message(body), (payload, body)


def test_explain_can_be_switched_off(runs: Path) -> None:
    with ServerThread(create_dashboard_app(runs, explain=False)) as server:
        status, body = post(f"{server.url}/api/explain", {"name": "cls", "text": "ab"})
        assert status == 403 and "dashboard.explain=false" in error_message(body)
