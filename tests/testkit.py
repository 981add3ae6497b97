"""Small helpers shared by the test directories (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error: ...` line a failed command printed; fails on a traceback or on zero/several lines."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """`lmforge ARGS` as 2 CPU processes under `torchrun --standalone` (one thread each), output captured."""
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "lmforge.cli",
           *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
