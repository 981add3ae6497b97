"""`lmforge serve` from the command line: bad input is one line and exit status 2; a real server process
shuts down gracefully on SIGTERM, finishing the request in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lmforge.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_bad(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["serve", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no model given" in run_bad(capsys)
    assert "no such model: " + str(tmp_path / "nope") in run_bad(capsys, str(tmp_path / "nope"))
    assert "serve.port" in run_bad(capsys, str(tiny_run), "serve.prot=8000")  # the closest valid key
    assert "serve.port must be in 0..65535" in run_bad(capsys, str(tiny_run), "serve.port=70000")
    assert "serve.max_batch_size must be at least 1" in run_bad(capsys, str(tiny_run), "serve.max_batch_size=0")
    missing = tmp_path / "keys.txt"
    assert f"serve.api_keys_file: {missing} not found" in run_bad(capsys, str(tiny_run), "--port", "0",
                                                                  f"serve.api_keys_file={missing}")  # fmt: skip
    assert "one model" in run_bad(capsys, str(tiny_run), str(tiny_run))
    with socket.socket() as taken:  # a port someone else listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in run_bad(capsys, str(tiny_run), "--port", str(port))


def test_sigterm_finishes_the_request_in_flight(long_run: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEYS"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(long_run), "--port", "0",
                             "serve.threads=1", "serve.dashboard=false"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("lmforge serve: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        body = {"model": "long", "prompt": "To be", "max_tokens": 600, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            proc.send_signal(signal.SIGTERM)  # mid-stream: 600 tokens take half a second or more
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        usage = json.loads(rest[-2][len("data: ") :])["usage"]
        assert usage["completion_tokens"] == 600  # finished whole, not cut off by the shutdown
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):  # and nothing listens any more
            httpx.get(f"{url}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
