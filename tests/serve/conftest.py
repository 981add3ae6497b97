from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import ServerThread, make_run

from lmforge.serve.app import create_app
from lmforge.serve.backends import Served, load_served


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_run(runs: Path) -> Path:
    """A GPT-2 flavoured char-level model with a 64-token context and a chat template."""
    return make_run(runs / "tiny")


@pytest.fixture(scope="session")
def long_run(runs: Path) -> Path:
    """The same shape with a 1024-token context: long generations keep a row busy for a while."""
    return make_run(runs / "long", block_size=1024, seed=1)


@pytest.fixture(scope="session")
def tiny_served(tiny_run: Path) -> Served:
    from lmforge.config import ServeConfig

    return load_served(ServeConfig(model=str(tiny_run)))


@pytest.fixture(scope="module")
def server(tiny_served: Served, runs: Path) -> Iterator[ServerThread]:
    """The tiny model behind default settings (8 rows), no API keys."""
    app = create_app(served=tiny_served, max_batch_size=8, runs_dir=str(runs), dashboard=False)
    with ServerThread(app) as running:
        yield running
