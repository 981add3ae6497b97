"""`lmforge generate` and `lmforge chat`: real subprocesses for the main paths (piped stdin included), the
CLI's `main()` in-process for the variations and the bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.infer.generate import SamplingParams, generate
from lmforge.infer.load import load_model

BIN = Path(sys.executable).parent
FAST = ["generate.threads=1", "generate.device=cpu"]


def lmforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([str(BIN / "lmforge"), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, *FAST])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_json_matches_the_library(run_dir: Path) -> None:
    proc = lmforge("generate", str(run_dir), "--prompt", "To be", "--prompt", "Whether 'tis", "--json",
                   "generate.temperature=0", "generate.max_new_tokens=12", *FAST)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    loaded = load_model(run_dir)
    expected = generate(loaded.model, loaded.tokenizer, ["To be", "Whether 'tis"],
                        SamplingParams(max_new_tokens=12, temperature=0), eos_id=loaded.eos_id)  # fmt: skip
    assert [r["text"] for r in records] == [c.text for c in expected]
    assert [r["prompt"] for r in records] == ["To be", "Whether 'tis"]
    assert records[0]["finish_reason"] in ("stop", "length")


def test_generate_stream_prints_what_generate_prints(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    step_dir = next((run_dir / "checkpoints").glob("step-*"))  # a step directory works too
    common = ["generate.temperature=0.9", "generate.seed=3", "generate.max_new_tokens=20", *FAST]
    streamed = lmforge("generate", str(step_dir), "-p", "To be", "--stream", *common)
    assert streamed.returncode == 0, streamed.stderr
    code, out, _ = run_main(capsys, "generate", str(step_dir), "-p", "To be", *common)
    assert code == 0
    assert streamed.stdout == out and out.startswith("To be")


def test_generate_from_config_and_prompts_file(run_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    (tmp_path / "prompts.txt").write_text("To be\n\nthat is\n", encoding="utf-8")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "or not"}\n', encoding="utf-8")
    (tmp_path / "gen.yaml").write_text(f"generate:\n  model: {run_dir}\n  temperature: 0\n", encoding="utf-8")
    code, out, err = run_main(capsys, "generate", "-c", str(tmp_path / "gen.yaml"), "--prompts-file",
                              str(tmp_path / "prompts.txt"), "-p", "first", "--json",
                              "generate.max_new_tokens=5")  # fmt: skip
    assert code == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["first", "To be", "that is"]
    code, out, err = run_main(capsys, "generate", str(run_dir), "generate.max_new_tokens=5", "--json",
                              f"generate.prompts_file={tmp_path / 'prompts.jsonl'}")  # fmt: skip
    assert code == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["or not"]
    code, out, _ = run_main(capsys, "generate", str(run_dir), "-p", "a", "-p", "b", "generate.max_new_tokens=3")
    assert code == 0 and out.startswith("### prompt 1\na") and "\n### prompt 2\nb" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "{missing}", "-p", "hi"], "no such model"),
        (["generate", "{run}", "-p", ""], "prompt 1 is empty"),
        (["generate", "{run}"], "no prompt given"),
        (["generate", "-p", "hi"], "no model given"),
        (["generate", "{run}", "-p", "hi", "generate.top_p=1.5"], "generate.top_p must be in (0, 1]"),
        (["generate", "{run}", "-p", "hi", "generate.top_p=0"], "generate.top_p must be in (0, 1]"),
        (["generate", "{run}", "-p", "hi", "generate.temperature=-1"], "generate.temperature must be"),
        (["generate", "{run}", "-p", "hi", "generate.min_p=2"], "generate.min_p must be in [0, 1)"),
        (["generate", "{run}", "-p", "hi", "generate.top_k=many"], "generate.top_k"),
        (["generate", "{run}", "-p", "hi", "generate.prompts_file={missing}"], "prompts file not found"),
        (["generate", "{run}", "{run}", "-p", "hi"], "one model"),
        (["chat", "{missing}"], "no such model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:  # fmt: skip
    args = [a.format(run=run_dir, missing=tmp_path / "nope") for a in args]
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


def test_bad_input_exit_code_in_a_subprocess(tmp_path: Path) -> None:
    proc = lmforge("generate", str(tmp_path / "nope"), "-p", "hi")
    assert proc.returncode == 2 and proc.stderr == f"error: no such model: {tmp_path / 'nope'}\n"


def test_chat_with_piped_stdin(run_dir: Path) -> None:
    proc = lmforge("chat", str(run_dir), "generate.temperature=0", "generate.max_new_tokens=8", *FAST,
                   stdin="hi\n\n/reset\nhello there\n/exit\nnot read\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.split("\n")
    assert len(replies) == 3 and replies[-1] == ""  # two replies, each ending in a newline
    assert "(history cleared)" in proc.stderr
    assert "note:" not in proc.stderr  # the run's tokenizer has a chat template


def test_chat_eof_quits_and_plain_fallback(plain_run_dir: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nhow are you"))  # no newline at the end, then EOF
    code, out, err = run_main(capsys, "chat", str(plain_run_dir), "--system", "Be brief.",
                              "generate.max_new_tokens=6", "generate.seed=1")  # fmt: skip
    assert code == 0, err
    assert "no chat template" in err
    assert out.count("\n") == 2
