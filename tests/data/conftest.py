"""Fixtures for the data-stage tests: run the real CLI in-process and capture what it prints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lmforge.cli import main

CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """cli('prepare', path, 'data.x=y', '--out', dir) -> (exit status, stdout, stderr)."""

    def drop_console_handlers() -> None:
        # main() attaches a stderr handler once per process, bound to the sys.stderr of that moment; each
        # call here must log into this test's captured stderr, not a finished test's.
        logger = logging.getLogger("lmforge")
        for handler in [h for h in logger.handlers if getattr(h, "_lmforge_console", False)]:
            logger.removeHandler(handler)

    def run(*args: str | Path) -> CliResult:
        drop_console_handlers()
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        finally:
            drop_console_handlers()
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run
