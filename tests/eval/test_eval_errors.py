"""Bad input to `lmforge evaluate`: one line `error: ...` naming the file, line and field, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["evaluate", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def assert_error(code: int, line: str, *fragments: str) -> None:
    assert code == 2, line
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line


def test_unknown_task_suggests_the_closest(capsys: pytest.CaptureFixture[str], gpt2_dir: Path) -> None:
    code, line = run_cli(capsys, str(gpt2_dir), "--task", "wikitext")
    assert_error(code, line, "unknown task 'wikitext'", "did you mean 'wikitext2'?")
    code, line = run_cli(capsys, str(gpt2_dir), "--task", "lambda")
    assert_error(code, line, "did you mean 'lambada'?")


def test_no_task_and_no_model(capsys: pytest.CaptureFixture[str], gpt2_dir: Path, tmp_path: Path) -> None:
    assert_error(*run_cli(capsys, str(gpt2_dir)), "no tasks")
    doc = tmp_path / "a.txt"
    doc.write_text("hello world\n")
    assert_error(*run_cli(capsys, "--task", "lm", f"eval.lm.files=[{doc}]"), "no model given")
    assert_error(
        *run_cli(capsys, str(tmp_path / "nope"), "--task", "lm", f"eval.lm.files=[{doc}]"), "no such model"
    )
    assert_error(*run_cli(capsys, str(gpt2_dir), "--task", "lm"), "needs eval.lm.files")


def test_empty_evaluation_set(capsys: pytest.CaptureFixture[str], gpt2_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, line = run_cli(
        capsys, str(gpt2_dir), "--task", "lm", f"eval.lm.files=[{empty}]", "--out", str(tmp_path / "r")
    )
    assert_error(code, line, "task 'lm': the evaluation set is empty", "empty.jsonl")
    data = tmp_path / "qa.jsonl"
    data.write_text("")
    code, line = run_cli(
        capsys,
        str(gpt2_dir),
        "--task",
        "multiple_choice",
        f"eval.multiple_choice.data={data}",
        "--out",
        str(tmp_path / "r"),
    )
    assert_error(code, line, "the evaluation set is empty", "qa.jsonl")


def test_task_file_missing_a_field_names_file_line_field(
    capsys: pytest.CaptureFixture[str], gpt2_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "qa.jsonl"
    rows = [{"question": "Is it?", "options": ["yes", "no"], "answer": 0}, {"question": "Or?", "answer": 1}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "qa.yaml"
    spec.write_text("data: qa.jsonl\ncontext: '{question}'\nchoices: options\ngold: answer\n")
    code, line = run_cli(capsys, str(gpt2_dir), "--task", str(spec), "--out", str(tmp_path / "r"))
    assert_error(code, line, f"{data}:2: missing field 'options'")

    spec.write_text("data: qa.jsonl\ncontext: '{prompt}'\nchoices: options\ngold: answer\n")
    code, line = run_cli(capsys, str(gpt2_dir), "--task", str(spec), "--out", str(tmp_path / "r"))
    assert_error(code, line, f"{data}:1: missing field 'prompt'")

    spec.write_text("data: qa.jsonl\nchoice: options\n")
    code, line = run_cli(capsys, str(gpt2_dir), "--task", str(spec))
    assert_error(code, line, "unknown spec key 'choice'", "did you mean 'choices'?")

    lambada = tmp_path / "lm-eval" / "lambada" / "lambada_test.jsonl"
    lambada.parent.mkdir(parents=True)
    lambada.write_text('{"text": "a b c"}\n{"txt": "d e f"}\n')
    code, line = run_cli(
        capsys, str(gpt2_dir), "--task", "lambada", f"eval.data_dir={tmp_path}", "--out", str(tmp_path / "r")
    )
    assert_error(code, line, f"{lambada}:2: missing field 'text'")


def test_label_outside_known_classes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data, preds = tmp_path / "dev.jsonl", tmp_path / "preds.txt"
    data.write_text('{"text": "good", "label": "pos"}\n{"text": "meh", "label": "neutral"}\n')
    preds.write_text("pos\npos\n")
    args = [
        "--task",
        "classify",
        f"eval.classify.data={data}",
        f"eval.classify.predictions={preds}",
        "--out",
        str(tmp_path / "r"),
    ]
    code, line = run_cli(capsys, *args, "eval.classify.labels=[neg, pos]")
    assert_error(code, line, f"{data}:2: label 'neutral' is not one of the known classes (neg, pos)")
    preds.write_text("pos\nnegative\n")
    code, line = run_cli(capsys, *args, "eval.classify.labels=[neg, neutral, pos]")
    assert_error(code, line, f"{preds}:2: predicted label 'negative' is not one of the known classes")
    preds.write_text("pos\n")
    assert_error(*run_cli(capsys, *args), "1 predictions for 2 examples")


def test_prompt_longer_than_the_context(
    capsys: pytest.CaptureFixture[str], gpt2_dir: Path, tmp_path: Path
) -> None:
    lambada = tmp_path / "lm-eval" / "lambada" / "lambada_test.jsonl"
    lambada.parent.mkdir(parents=True)
    long_text = " ".join(["the river flows through the valley"] * 20) + " sea"
    lambada.write_text(
        json.dumps({"text": "short context here"}) + "\n" + json.dumps({"text": long_text}) + "\n"
    )
    base = [str(gpt2_dir), "--task", "lambada", f"eval.data_dir={tmp_path}", "--out", str(tmp_path / "r")]
    code, line = run_cli(capsys, *base, "eval.truncation=error")
    assert_error(code, line, f"{lambada}:2:", "do not fit the model's context of 48", "eval.truncation=left")
    # The default truncates from the left and says so in the report.
    assert run_cli(capsys, *base)[0] == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())["tasks"]["lambada"]
    assert report["details"]["truncated"] == 1 and "1 of 2 examples" in report["notes"][0]
    # A continuation that cannot fit at all is always an error.
    lambada.write_text(json.dumps({"text": "context " + "x" * 300}) + "\n")
    assert_error(*run_cli(capsys, *base), f"{lambada}:1: the continuation alone is")


def test_bad_settings(capsys: pytest.CaptureFixture[str], gpt2_dir: Path, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("hello world\n")
    base = [str(gpt2_dir), "--task", "lm", f"eval.lm.files=[{doc}]"]
    assert_error(*run_cli(capsys, *base, "eval.max_length=100"), "exceeds the model's block_size (48)")
    assert_error(
        *run_cli(capsys, *base, "eval.max_length=16", "eval.stride=16"), "must be smaller than max_length"
    )
    assert_error(*run_cli(capsys, *base, "--limit", "0"), "eval.limit must be at least 1")
    assert_error(*run_cli(capsys, *base, "eval.limt=3"), "unknown config key 'eval.limt'", "eval.limit")
    assert_error(*run_cli(capsys, *base, "--task", "lm"), "task 'lm' is listed twice")
