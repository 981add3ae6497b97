"""Helpers for the data-stage tests: run the real CLI in-process and capture what it prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmforge.cli import main
from lmforge.data.documents import iter_records, split_path

CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """cli('prepare', path, 'data.x=y', '--out', dir) -> (exit status, stdout, stderr)."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def records(out: Path, split: str) -> list[dict[str, Any]]:
    return list(iter_records(split_path(out, split)))


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def one_line_error(rc: int, err: str) -> str:
    """Bad input: exit status 2 and a single `error: ...` line, no traceback."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
