"""Run directories: manifest contents, atomic writes that leave nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.config import Config
from lmforge.runs import atomic_path, atomic_write_json, sha256_file, start_run


def test_manifest_records_inputs_outputs_versions(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello")
    run_dir = tmp_path / "run"
    with start_run("demo", Config(), run_dir) as run:
        run.add_inputs([src])
        out = run.path("out.json")
        atomic_write_json(out, {"a": 1})
        run.add_output(out)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["inputs"][0]["sha256"] == sha256_file(src)
    assert manifest["outputs"][0] == {"path": "out.json", "sha256": sha256_file(out), "bytes": out.stat().st_size}
    assert "torch" in manifest["versions"] and "python" in manifest["versions"]
    assert (run_dir / "config.yaml").read_text().startswith("run:")
    assert (run_dir / "logs" / "demo.log").exists()


def test_failed_stage_marks_manifest_failed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), start_run("demo", Config(), tmp_path) as _:
        raise RuntimeError("boom")
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "failed"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_never_leaves_a_finished_looking_file(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    code = (
        "import os, sys\n"
        "from lmforge.runs import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert not target.exists()
