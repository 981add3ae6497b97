"""Bad input to `lmforge export --format onnx` and to the ONNX runner: one line on stderr, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import tiny_config, write_checkpoint

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.export.onnx import quantize_onnx
from lmforge.export.onnx_runner import OnnxLM


def one_line_error(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def checkpoint(tmp_path: Path, tokenizer_dir: Path) -> Path:
    return write_checkpoint(tmp_path / "run" / "checkpoints", tiny_config("gpt2", n_layer=1), tokenizer_dir)


def test_unknown_format_suggests_the_closest(capsys, checkpoint: Path, tmp_path: Path):
    err = one_line_error(capsys, "export", str(checkpoint), "--format", "onx", "--out", str(tmp_path / "x"))
    assert "unknown export format 'onx'" in err and "did you mean 'onnx'" in err
    err = one_line_error(capsys, "export", str(checkpoint), "--format", "safetensor", "--out", str(tmp_path / "x"))
    assert "did you mean 'safetensors'" in err
    assert not (tmp_path / "x").exists()


def test_not_a_model(capsys, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_error(capsys, "export", str(empty), "--format", "onnx", "--out", str(tmp_path / "o1"))
    assert str(empty) in err
    err = one_line_error(capsys, "export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "o2"))
    assert "no such model" in err and "nope" in err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    err = one_line_error(capsys, "export", str(text), "--format", "onnx", "--out", str(tmp_path / "o3"))
    assert "notes.txt" in err


def test_onnx_options_are_checked(capsys, checkpoint: Path, tmp_path: Path):
    err = one_line_error(capsys, "export", str(checkpoint), "-f", "onnx", "-o", str(tmp_path / "o"), "export.dtype=bf16")
    assert "export.dtype=bf16" in err and "fp32" in err
    err = one_line_error(capsys, "export", str(checkpoint), "-f", "onnx", "-o", str(tmp_path / "o"), "export.onnx_int9=1")
    assert "export.onnx_int8" in err  # unknown key: the closest valid one
    err = one_line_error(capsys, "export", str(checkpoint), "-f", "onnx", "-o", str(tmp_path / "o"),
                         "export.eval_reports=[" + str(tmp_path / "no-eval") + "]")  # fmt: skip
    assert "export.eval_reports" in err and "no-eval" in err


def test_failing_check_is_an_error_and_leaves_nothing(capsys, checkpoint: Path, tmp_path: Path):
    """A check limit no real export meets: the export fails in one line and no output directory appears."""
    out = tmp_path / "onnx"
    err = one_line_error(capsys, "export", str(checkpoint), "-f", "onnx", "-o", str(out), "export.onnx_atol=1e-12")
    assert "onnx check failed" in err and "export.onnx_atol=1e-12" in err
    assert not out.exists() and not list(tmp_path.glob(".onnx.tmp-*"))


def test_generate_with_a_broken_onnx_file(capsys, tmp_path: Path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a protobuf at all")
    err = one_line_error(capsys, "generate", str(broken), "--prompt", "hi")
    assert "model.onnx" in err and "onnxruntime cannot load it" in err
    with pytest.raises(LmforgeError, match="no ONNX model"):
        OnnxLM(tmp_path / "missing.onnx")
    with pytest.raises(LmforgeError, match="not an ONNX model"):
        quantize_onnx(broken, tmp_path / "q.onnx")
    with pytest.raises(LmforgeError, match="no such ONNX model"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx")
