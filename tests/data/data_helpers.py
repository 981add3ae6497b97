"""Helpers shared by the data-stage tests (a plain module: conftest.py is not meant to be imported)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.data.documents import iter_records, split_path


def records(out: Path, split: str) -> list[dict[str, Any]]:
    return list(iter_records(split_path(out, split)))


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def one_line_error(rc: int, err: str) -> str:
    """Bad input: exit status 2 and a single `error: ...` line (after any log lines), no traceback."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]
