from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TEXT, write_shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def big_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough for block_size 4096 in both splits."""
    return write_shards(tmp_path_factory.mktemp("big_shards"), text=TEXT * 400)
