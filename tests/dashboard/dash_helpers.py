"""A real uvicorn server in a thread, run directories written by the real components (start_run,
MetricsLogger, the CLI), and small HTTP helpers for the dashboard tests."""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import uvicorn

from lmforge.config import load_config
from lmforge.runs import start_run
from lmforge.train.metrics import MetricsLogger

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class ServerThread:
    """`with ServerThread(app) as server:` serves the app on 127.0.0.1 at a free port (server.url)."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def get(url: str) -> tuple[int, Any]:
    """(status, the JSON body or bytes) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, _body(response.read(), response.headers.get("content-type", ""))
    except urllib.error.HTTPError as err:
        return err.code, _body(err.read(), err.headers.get("content-type", ""))


def post(url: str, payload: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _body(response.read(), response.headers.get("content-type", ""))
    except urllib.error.HTTPError as err:
        return err.code, _body(err.read(), err.headers.get("content-type", ""))


def _body(raw: bytes, content_type: str) -> Any:
    return json.loads(raw) if "json" in content_type else raw


def error_message(body: Any) -> str:
    """The message of an error answer: FastAPI's {"detail"} or the OpenAI-style {"error": {"message"}}."""
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return body["detail"]
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message"))
    return str(body)


def train_event(step: int, seed: int = 0) -> dict[str, Any]:
    """A plausible training log line: loss decaying with noise, warmup + cosine lr, throughput."""
    rng = random.Random(step * 7919 + seed)
    lr = 1e-3 * min(1.0, step / 10) * (0.55 + 0.45 * math.cos(math.pi * min(step, 200) / 200))
    return {"event": "train", "step": step, "loss": 4.0 * math.exp(-step / (60 + 20 * seed)) + 0.4 + 0.05 * rng.random(),
            "lr": lr, "tokens": step * 4096, "tok_per_s": 9000.0 + 800 * rng.random(), "epoch": step / 500,
            "seconds": step * 0.45}  # fmt: skip


def eval_event(step: int, seed: int = 0) -> dict[str, Any]:
    val = 4.0 * math.exp(-step / (70 + 20 * seed)) + 0.5
    return {"event": "eval", "step": step, "val_loss": val, "val_ppl": math.exp(val), "best_val": val}


def finished_training_run(runs: Path, name: str, steps: int, seed: int = 0) -> Path:
    """A pretraining-shaped run, finished: config, log, metrics.jsonl + TensorBoard, manifest."""
    cfg = load_config(None, ["train.log_every=10", f"run.seed={seed}"])
    with start_run("pretrain", cfg, runs / name) as run:
        metrics = MetricsLogger(run.dir)
        for step in range(10, steps + 1, 10):
            metrics.log(train_event(step, seed))
            if step % 50 == 0:
                metrics.log(eval_event(step, seed))
        metrics.log({"event": "sample", "step": steps, "text": "To be, or not"})
        metrics.close()
        run.extra["summary"] = {"steps": steps, "stop_reason": "max_steps"}
    return run.dir


def failed_run(runs: Path, name: str) -> Path:
    cfg = load_config(None, [])
    try:
        with start_run("pretrain", cfg, runs / name) as run:
            MetricsLogger(run.dir).close()
            raise RuntimeError("out of patience")
    except RuntimeError:
        pass
    return runs / name


def unfinished_run(runs: Path, name: str, steps: int, age_seconds: float = 0.0) -> tuple[Path, MetricsLogger]:
    """A run still training (no manifest): config, log and a MetricsLogger left open for more events.
    With age_seconds, every file looks last written that long ago (a killed run)."""
    run_dir = runs / name
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run:\n  seed: 1337\n", encoding="utf-8")
    (run_dir / "logs" / "pretrain.log").write_text("started\n", encoding="utf-8")
    metrics = MetricsLogger(run_dir)
    for step in range(10, steps + 1, 10):
        metrics.log(train_event(step, 2))
    if age_seconds:
        metrics.close()
        old = time.time() - age_seconds
        for path in (run_dir / "metrics.jsonl", run_dir / "config.yaml", run_dir / "logs" / "pretrain.log", run_dir):
            os.utime(path, (old, old))
    return run_dir, metrics
