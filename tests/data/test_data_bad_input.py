"""Bad input through the CLI: one `error:` line naming the file and line (or key), exit status 2, and no
output that looks finished; `--on-error skip` skips bad records and counts them in report.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from data_helpers import one_line_error, records, report

GOOD = json.dumps({"text": "A perfectly ordinary sentence about the weather in the mountains today."})


def no_outputs(out: Path) -> None:
    leftovers = [p.name for p in out.glob("*.jsonl.zst")] + [p.name for p in out.glob(".*tmp*")]
    assert leftovers == [] and not (out / "report.json").exists()


def test_empty_file(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_bytes(b"")
    line = one_line_error(*cli("prepare", f, "--out", tmp_path / "p")[::2])
    assert line == f"error: {f}: empty file"
    no_outputs(tmp_path / "p")


def test_invalid_utf8_names_file_and_line(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes("line one\nline two\ncaf\u00e9 au lait\n".encode("latin-1"))
    line = one_line_error(*cli("prepare", f, "--out", tmp_path / "p")[::2])
    assert line.startswith(f"error: {f}:3: not valid UTF-8")
    g = tmp_path / "bad.jsonl"
    g.write_bytes(GOOD.encode() + b"\n" + b'{"text": "\xc3\x28"}\n')
    line = one_line_error(*cli("prepare", g, "--out", tmp_path / "p")[::2])
    assert line.startswith(f"error: {g}:2: not valid UTF-8")
    no_outputs(tmp_path / "p")


def test_binary_file(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "image.txt"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    line = one_line_error(*cli("prepare", f, "data.reader.txt_mode=line", "--out", tmp_path / "p")[::2])
    assert line.startswith(f"error: {f}:1: not valid UTF-8")
    g = tmp_path / "nul.jsonl"
    g.write_bytes(GOOD.encode() + b"\n" + GOOD.encode() + b"\n\x00\x01\x02\n")
    line = one_line_error(*cli("prepare", g, "--out", tmp_path / "p")[::2])
    assert line == f"error: {g}:3: binary data (NUL byte), not text"


def test_over_large_line(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "big.jsonl"
    with open(f, "wb") as fh:
        fh.write(GOOD.encode() + b"\n" + b'{"text": "' + b"a" * (3 << 20) + b'"}\n')
    line = one_line_error(*cli("prepare", f, "data.reader.max_record_mb=1", "--out", tmp_path / "p")[::2])
    assert line == f"error: {f}:2: record larger than data.reader.max_record_mb=1 MB"


def test_real_50mb_line_fails_fast(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "huge.txt"
    with open(f, "wb") as fh:
        fh.write(b"first line\n")
        fh.write(b"x" * (50 << 20))
        fh.write(b"\n")
    t0 = time.perf_counter()
    rc, _, err = cli("prepare", f, "data.reader.txt_mode=line", "--out", tmp_path / "p")
    line = one_line_error(rc, err)
    assert line == f"error: {f}:2: record larger than data.reader.max_record_mb=32 MB"
    assert time.perf_counter() - t0 < 3


def test_missing_column_and_field_name_the_available_ones(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "reviews.csv"
    f.write_text("label,review\n1,great hotel with a friendly staff and a view\n", encoding="utf-8")
    line = one_line_error(*cli("prepare", f, "--out", tmp_path / "p")[::2])
    assert line == f"error: {f}:1: no column 'text' (data.reader.text_field); available: label, review"
    line = one_line_error(*cli("prepare", f, "data.reader.text_field=review", "data.reader.label_field=stars",
                               "--out", tmp_path / "p")[::2])
    assert line == f"error: {f}:1: no column 'stars' (data.reader.label_field); available: label, review"
    g = tmp_path / "rows.jsonl"
    g.write_text(GOOD + "\n" + json.dumps({"body": "x", "id": 3}) + "\n", encoding="utf-8")
    line = one_line_error(*cli("prepare", g, "--out", tmp_path / "p")[::2])
    assert line.startswith(f"error: {g}:2: no field 'text' (data.reader.text_field)")
    assert line.endswith("available: body, id")


def test_path_that_does_not_exist(cli: Callable, tmp_path: Path) -> None:
    line = one_line_error(*cli("prepare", tmp_path / "nope.txt", "--out", tmp_path / "p")[::2])
    assert line == f"error: no such file or directory: {tmp_path / 'nope.txt'}"
    assert not (tmp_path / "p").exists()  # nothing created for a typo


def test_all_documents_removed(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "junk.txt"
    f.write_text("1234 5678\n!!! ???\n", encoding="utf-8")
    out = tmp_path / "p"
    line = one_line_error(*cli("prepare", f, "data.reader.txt_mode=line", "--out", out)[::2])
    assert line.startswith("error: all 2 documents were removed by the filters (quality/min_alpha_word_fraction: 2)")
    no_outputs(out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_failed_run_leaves_no_stale_outputs(cli: Callable, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD + "\n", encoding="utf-8")
    out = tmp_path / "p"
    assert cli("prepare", good, "data.split.val=0", "--out", out)[0] == 0
    assert (out / "train.jsonl.zst").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD.encode() + b"\n\xff\n")
    one_line_error(*cli("prepare", bad, "data.split.val=0", "--out", out)[::2])
    no_outputs(out)  # the earlier run's train.jsonl.zst must not pass for this run's output


def test_on_error_skip_counts_bad_records(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    with open(f, "wb") as fh:
        fh.write(GOOD.encode() + b"\n")
        fh.write(b"{broken json\n")
        fh.write(b'{"text": "caf\xe9"}\n')
        fh.write(b'{"title": "no text field"}\n')
        fh.write(b'{"text": "' + b"z" * (2 << 20) + b'"}\n')
        fh.write(json.dumps({"text": "Another ordinary sentence, this one about trains and timetables."}).encode())
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    out = tmp_path / "p"
    rc, _, err = cli("prepare", f, empty, "data.reader.max_record_mb=1", "data.split.val=0", "--on-error", "skip",
                     "--out", out)
    assert rc == 0, err
    rep = report(out)
    assert rep["skipped"] == {"invalid_json": 1, "invalid_utf8": 1, "missing_field": 1, "record_too_large": 1,
                              "empty_file": 1}
    assert len(rep["skipped_examples"]) == 5 and rep["skipped_examples"][0].startswith(f"{f}:2: ")
    assert len(records(out, "train")) == 2
