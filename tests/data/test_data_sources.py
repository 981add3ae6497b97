"""Readers: every format, compression, directories and globs, streaming, and record-level faults."""

from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.config import ReaderConfig
from lmforge.data.sources import BadRecords, Reader, resolve_inputs
from lmforge.errors import DataError


def read(paths: list[Path], on_error: str = "raise", **cfg: object) -> tuple[list, BadRecords]:
    bad = BadRecords(on_error)
    reader = Reader(ReaderConfig(**cfg), bad)  # type: ignore[arg-type]
    return list(reader(paths)), bad


def test_txt_modes_and_sources(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one\ntwo\n\n\nthree\nfour\n\nfive\n", encoding="utf-8")
    docs, _ = read([f])
    assert [d.text for d in docs] == ["one\ntwo\n\n\nthree\nfour\n\nfive\n"]
    assert docs[0].source == f"{f}:1"
    docs, _ = read([f], txt_mode="paragraph")
    assert [(d.text, d.source) for d in docs] == [
        ("one\ntwo", f"{f}:1"), ("three\nfour", f"{f}:5"), ("five", f"{f}:8")]
    docs, _ = read([f], txt_mode="line")
    assert [(d.text, d.source.rsplit(":", 1)[1]) for d in docs] == [
        ("one", "1"), ("two", "2"), ("three", "5"), ("four", "6"), ("five", "8")]


def test_jsonl_text_label_and_instruction_records(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    lines = [
        {"text": "plain text", "label": 1, "other": "dropped"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "output": "Hi!"},  # no `input`: still an instruction record
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    docs, _ = read([f])
    assert docs[0].text == "plain text" and docs[0].fields == {"label": 1}
    assert docs[1].text == "Add the numbers.\n\n2 and 3\n\n5"
    assert docs[1].fields == {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert docs[2].text == "Say hi.\n\nHi!" and docs[2].fields["input"] == ""
    assert [d.source for d in docs] == [f"{f}:1", f"{f}:2", f"{f}:3"]


def test_label_field_renamed_to_label(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"body": "hello there", "sentiment": "pos"}) + "\n", encoding="utf-8")
    docs, _ = read([f], text_field="body", label_field="sentiment")
    assert docs[0].text == "hello there" and docs[0].fields == {"label": "pos"}


def test_json_array_streams_items_and_other_json(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    items = [{"text": f"item {i} " + "x" * (i % 50)} for i in range(3000)]  # > one read chunk
    f.write_text(json.dumps(items, indent=1), encoding="utf-8")
    docs, _ = read([f])
    assert [d.text for d in docs] == [x["text"] for x in items]
    assert docs[1].source.startswith(f"{f}:") and docs[1].source.endswith("[1]")
    # Not an array: a sequence of (pretty-printed) objects.
    g = tmp_path / "b.json"
    g.write_text('{"text": "a"}\n{\n  "text": "b"\n}\n', encoding="utf-8")
    docs, _ = read([g])
    assert [(d.text, d.source) for d in docs] == [("a", f"{g}:1"), ("b", f"{g}:2")]


def test_real_alpaca_json_array(shared_data: Path) -> None:
    docs, _ = read([shared_data / "instructions" / "alpaca_5000.json"])
    assert len(docs) == 4500
    assert all({"instruction", "input", "output"} <= d.fields.keys() for d in docs)
    assert docs[0].text.startswith(docs[0].fields["instruction"])


def test_csv_tsv_columns_quotes_and_labels(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    with open(f, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["label", "review"])
        w.writerow(["1", 'good, "very" good'])
        w.writerow(["0", "two\nlines"])
        w.writerow(["1", "last"])
    docs, _ = read([f], text_field="review")
    assert [d.text for d in docs] == ['good, "very" good', "two\nlines", "last"]
    assert [d.fields["label"] for d in docs] == [1, 0, 1]
    assert [d.source.rsplit(":", 1)[1] for d in docs] == ["2", "3", "5"]
    t = tmp_path / "a.tsv"
    t.write_text('sentence\tlabel\na "quoted word here\t0\nsecond \t1\n', encoding="utf-8")
    docs, _ = read([t], text_field="sentence")
    assert [d.text for d in docs] == ['a "quoted word here', "second "]


def test_real_sst2_and_chnsenticorp(shared_data: Path) -> None:
    docs, _ = read([shared_data / "sentiment" / "sst2" / "train.tsv"], text_field="sentence")
    assert len(docs) == 67349 and {d.fields["label"] for d in docs} == {0, 1}
    docs, _ = read([shared_data / "sentiment" / "chnsenticorp" / "ChnSentiCorp_htl_all.csv"], text_field="review")
    assert len(docs) == 6989


def test_parquet_in_batches(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    table = pa.table({"text": [f"row {i}" for i in range(2500)], "label": [i % 3 for i in range(2500)]})
    pq.write_table(table, f, row_group_size=700)
    docs, _ = read([f])
    assert len(docs) == 2500 and docs[2499].text == "row 2499" and docs[2499].fields["label"] == 2499 % 3
    assert docs[2499].source == f"{f}:2500"


def test_gz_and_zst_are_transparent(tmp_path: Path) -> None:
    body = "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(100)).encode()
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(body))
    zst = tmp_path / "b.txt.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"first\nsecond\n"))
    docs, _ = read([gz])
    assert len(docs) == 100 and docs[5].text == "doc 5"
    docs, _ = read([zst], txt_mode="line")
    assert [d.text for d in docs] == ["first", "second"]


def test_directories_and_globs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.txt", "d/sub/b.txt", "d/README.md", "d/.hidden.txt", "c.txt"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    files = resolve_inputs([str(tmp_path / "d")])
    assert [f.name for f in files] == ["a.txt", "b.txt"]  # README.md and hidden files skipped
    files = resolve_inputs([str(tmp_path / "**" / "*.txt")])
    assert {f.name for f in files} == {"a.txt", "b.txt", "c.txt"}
    with pytest.raises(DataError, match="no files match"):
        resolve_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_inputs([str(tmp_path / "d" / "README.md")])


def test_reading_streams_with_bounded_memory(tmp_path: Path) -> None:
    """A 24 MB file read line by line never holds more than a few lines' worth of memory."""
    f = tmp_path / "big.jsonl"
    line = (json.dumps({"text": "word " * 200}) + "\n").encode()
    with open(f, "wb") as fh:
        for _ in range(24 * (1 << 20) // len(line)):
            fh.write(line)
    reader = Reader(ReaderConfig(), BadRecords())
    tracemalloc.start()
    count = sum(1 for _ in reader([f]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count > 20_000
    assert peak < 4 * (1 << 20), f"peak {peak / 2**20:.1f} MB while reading a 24 MB file"


def test_over_large_record_found_without_reading_it_whole(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    with open(f, "wb") as fh:
        fh.write(b'{"text": "small"}\n')
        fh.write(b'{"text": "' + b"x" * (3 << 20) + b'"}\n')
        fh.write(b'{"text": "after"}\n')
    with pytest.raises(DataError, match=rf"^{f}:2: record larger than data.reader.max_record_mb=1 MB"):
        read([f], max_record_mb=1)
    docs, bad = read([f], on_error="skip", max_record_mb=1)
    assert [d.text for d in docs] == ["small", "after"]
    assert bad.counts == {"record_too_large": 1}
    # The same limit holds inside a JSON array.
    g = tmp_path / "a.json"
    g.write_text(json.dumps([{"text": "ok"}, {"text": "y" * (3 << 20)}]), encoding="utf-8")
    with pytest.raises(DataError, match="record larger than"):
        read([g], max_record_mb=1)


def test_bad_records_skipped_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"text": "good"}\n{"text": "bad \xff byte"}\nnot json\n{"title": "no text"}\n[1, 2]\n{"text": "end"}\n')
    with pytest.raises(DataError, match=rf"^{f}:2: not valid UTF-8"):
        read([f])
    docs, bad = read([f], on_error="skip")
    assert [d.text for d in docs] == ["good", "end"]
    assert bad.counts == {"invalid_utf8": 1, "invalid_json": 1, "missing_field": 1, "not_an_object": 1}
