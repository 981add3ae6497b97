from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compress_helpers import pretrain_teacher, write_char_shards


@pytest.fixture(scope="session")
def shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Char-level shards of the first 150,000 characters of tiny-shakespeare (last 10% validation)."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:150_000]
    return write_char_shards(text, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def teacher(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT pretrained for 100 steps on the shards: its run directory."""
    return pretrain_teacher(shards, tmp_path_factory.mktemp("runs") / "teacher")
