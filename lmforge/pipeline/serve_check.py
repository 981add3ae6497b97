"""The pipeline's `serve` stage: start `lmforge serve` on a free loopback port, send one completion, stop it.

The server runs as its own process (as a user starts it); the check waits for `GET /health`, posts one
greedy `POST /v1/completions`, writes the reply to `serve_check.json` in the stage's run directory, and
stops the server (SIGTERM, then SIGKILL after a grace period) whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.runs import atomic_write_json, start_run

log = logging.getLogger("lmforge")

READY_SECONDS = 120.0  # loading a model on a busy CPU
PROMPT = "\n"
MAX_TOKENS = 16


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api_key(cfg: Config) -> str | None:
    """The first key the server will demand, when the config or the environment sets any."""
    keys = [k.strip() for k in os.environ.get(cfg.serve.api_keys_env, "").split(",") if k.strip()]
    if not keys and cfg.serve.api_keys_file and Path(cfg.serve.api_keys_file).is_file():
        keys = [k.strip() for k in Path(cfg.serve.api_keys_file).read_text().splitlines() if k.strip()]
    return keys[0] if keys else None


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0,
             key: str | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read().decode("utf-8") or "{}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_server(cfg: Config, model: str, config_file: Path, prompt: str = PROMPT,
                 max_tokens: int = MAX_TOKENS) -> dict[str, Any]:  # fmt: skip
    """Serve `model`, ask for one completion, stop; the reply and timings (raises LmforgeError on failure)."""
    key = _api_key(cfg)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmforge.cli", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--config", str(config_file)]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            models = _wait_ready(proc, base, stderr)
            ready = time.perf_counter() - started
            body = {"model": (models[0] if models else "default"), "prompt": prompt, "max_tokens": max_tokens,
                    "temperature": 0.0}  # fmt: skip
            t0 = time.perf_counter()
            try:
                status, reply = _request(f"{base}/v1/completions", body, key=key)
            except urllib.error.HTTPError as exc:
                raise LmforgeError(f"serve check: POST /v1/completions answered HTTP {exc.code}: "
                                   f"{exc.read().decode(errors='replace')[:200]}") from None  # fmt: skip
            seconds = time.perf_counter() - t0
        finally:
            _stop(proc)
    choices = reply.get("choices") or [{}]
    text = choices[0].get("text")
    if status != 200 or not isinstance(text, str):
        raise LmforgeError(f"serve check: unexpected reply from /v1/completions: {json.dumps(reply)[:200]}")
    return {"url": base, "command": ["lmforge", *cmd[3:]], "status": status, "startup_seconds": round(ready, 3),
            "seconds": round(seconds, 3), "prompt": prompt, "completion": text, "usage": reply.get("usage"),
            "finish_reason": choices[0].get("finish_reason")}  # fmt: skip


def _wait_ready(proc: subprocess.Popen[bytes], base: str, stderr: Any) -> list[str]:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", errors="replace").strip().splitlines()[-3:]
            raise LmforgeError(f"serve check: the server exited with status {proc.returncode}: {' | '.join(tail)}")
        try:
            _, health = _request(f"{base}/health", timeout=2.0)  # 503 (an HTTPError) until the engine runs
            return [str(m) for m in health.get("models", [])]
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.25)
    raise LmforgeError(f"serve check: the server did not answer on {base} within {READY_SECONDS:.0f} s")


def run_serve_check(cfg: Config, model: str, out: Path, config_file: Path) -> dict[str, Any]:
    with start_run("serve", cfg, out) as run:
        run.add_inputs([model])
        result = check_server(cfg, model, config_file)
        atomic_write_json(run.path("serve_check.json"), result)
        run.add_output(run.path("serve_check.json"))
        log.info("serve check: HTTP %d in %.2f s (server up in %.1f s): %r", result["status"], result["seconds"],
                 result["startup_seconds"], result["completion"][:60])  # fmt: skip
    return result


def pipeline_stage(cfg: Config, inputs: dict[str, list[str]], out: Path, config_file: Path) -> None:
    run_serve_check(cfg, inputs["model"][0], out, config_file)
