"""Small helpers shared by the test directories (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import pytest


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error: ...` line a failed command printed; fails on a traceback or on zero/several lines."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
