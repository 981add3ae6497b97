"""Finding the system's headless Chromium (Debian's `chromium` package, installed by `make test`) for
Playwright, and screenshots into tests/artifacts/ (git-ignored). The fixtures are in conftest.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dash_helpers import ARTIFACTS

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium() -> str | None:
    given = os.environ.get("LMFORGE_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for path in CANDIDATES:
        if Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a page was drawn, not a blank
    return path
