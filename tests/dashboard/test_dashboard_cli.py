"""`lmforge dashboard`: a real process serving the runs; bad input gives one line and exit status 2."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dash_helpers import get
from testkit import error_line

from lmforge.cli import main


def test_serves_the_runs_until_stopped(runs: Path) -> None:
    command = [sys.executable, "-m", "lmforge.cli", "dashboard", "--runs", str(runs), "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, "the dashboard did not print its address"
        status, body = get(f"{url}api/runs")
        assert status == 200 and body["runs_dir"] == str(runs)
        assert {"pretrain-a", "cls", "eval"} <= {r["name"] for r in body["runs"]}
        status, page = get(url)
        assert status == 200 and b"<title>lmforge</title>" in page
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


def test_bad_input_one_line(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--runs", str(tmp_path / "missing")]) == 2
    assert error_line(capsys) == f"error: runs directory not found: {tmp_path / 'missing'} (pass --runs DIR)"
    assert main(["dashboard", "--runs", str(runs), "dashboard.port=http"]) == 2
    assert "config key 'dashboard.port': expected int, got 'http'" in error_line(capsys)
    assert main(["dashboard", "--runs", str(runs), "dashboard.prot=1"]) == 2
    assert "did you mean 'dashboard.port'?" in error_line(capsys)
    assert main(["dashboard", "--runs", str(runs), "--port", "70000"]) == 2
    assert "dashboard.port must be in 0..65535, got 70000" in error_line(capsys)
    assert main(["dashboard", "--runs", str(runs), "--api-base", "localhost:8000"]) == 2
    assert "dashboard.api_base must be an http(s) URL" in error_line(capsys)
    assert main(["dashboard", "--runs", str(runs), "somewhere"]) == 2
    assert "dashboard: unexpected argument 'somewhere'" in error_line(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--runs", str(runs), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in error_line(capsys)
