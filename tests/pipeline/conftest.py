"""A tiny pipeline over slices of the real shared data, run once per session and copied where a test needs
its own directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from pipeline_helpers import run_cli, write_pipeline, write_sources


@pytest.fixture(scope="session")
def sources(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sources(shared_data, tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="session")
def done_pipeline(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The full tiny pipeline, run once through `lmforge pipeline`: its file, directory and printed output."""
    root = tmp_path_factory.mktemp("pipeline")
    config = write_pipeline(root / "tiny.yaml", sources, out=root / "out")
    torch.set_num_threads(1)
    code, out, err = run_cli(["pipeline", str(config)])
    assert code == 0, err
    return {"config": config, "out": root / "out", "stdout": out, "stderr": err}


@pytest.fixture
def pipeline_copy(done_pipeline: dict[str, object], tmp_path: Path) -> tuple[Path, Path]:
    """(pipeline file, a copy of the finished pipeline's directory) for a test that changes things."""
    out = tmp_path / "out"
    shutil.copytree(done_pipeline["out"], out)  # type: ignore[arg-type]
    return done_pipeline["config"], out  # type: ignore[return-value]
