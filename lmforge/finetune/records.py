"""Fine-tuning records: read a prepared data directory or a .jsonl / .json / .csv / .tsv file into records
that remember where they came from (`file:line`), and split off validation records when there are none.

Files here are small (thousands to a few hundred thousand examples): they are read whole, unlike the
streaming readers of the prepare stage.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.documents import iter_records, split_path
from lmforge.errors import DataError

FORMATS = (".jsonl", ".json", ".csv", ".tsv")


@dataclass
class Record:
    fields: dict[str, Any]
    where: str  # "file:line" (a prepared record: the source it was read from)


def read_records(path: str | Path, split: str = "train") -> list[Record]:
    """The records of a file, or of one split of a prepared data directory."""
    path = Path(path)
    if path.is_dir():
        file = split_path(path, split)
        if not file.is_file():
            raise DataError(f"{path}: no {split} split ({file.name}) in this prepared data directory")
        return [
            Record(r, str(r.get("source") or f"{file}:{i}")) if isinstance(r, dict) else _not_object(file, i, r)
            for i, r in enumerate(iter_records(file), 1)
        ]
    if not path.is_file():
        raise DataError(f"no such file or directory: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unsupported file type (expected a prepared data directory or {' '.join(FORMATS)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix == ".jsonl":
        records = list(_jsonl(text, path))
    elif suffix == ".json":
        records = list(_json(text, path))
    else:
        records = list(_table(text, path, "\t" if suffix == ".tsv" else ","))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _not_object(file: Path, line: int, value: Any) -> Record:
    raise DataError(f"{file}:{line}: expected a JSON object, got {type(value).__name__}")


def _jsonl(text: str, path: Path) -> Iterator[Record]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        yield Record(value, f"{path}:{lineno}") if isinstance(value, dict) else _not_object(path, lineno, value)


def _json(text: str, path: Path) -> Iterator[Record]:
    """A JSON array of objects (items named `file:line[index]`), or JSON objects one after another."""
    decoder = json.JSONDecoder()
    pos, index = 0, 0
    stripped = text.lstrip()
    in_array = stripped.startswith("[")
    if in_array:
        pos = text.index("[") + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    while True:
        pos = skip(pos)
        if pos >= len(text):
            if in_array:
                raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: not valid JSON (unterminated array)")
            return
        if in_array and text[pos] == "]":
            return
        if in_array and index > 0:
            if text[pos] != ",":
                line = text.count("\n", 0, pos) + 1
                raise DataError(f"{path}:{line}: not valid JSON (expected ',' or ']')")
            pos = skip(pos + 1)
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{text.count(chr(10), 0, exc.pos) + 1}: not valid JSON ({exc.msg})") from None
        where = f"{path}:{line}[{index}]" if in_array else f"{path}:{line}"
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
        yield Record(value, where)
        index += 1


def _table(text: str, path: Path, delimiter: str) -> Iterator[Record]:
    # TSV files (GLUE's among them) do not quote: a '"' inside a sentence is just a character.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path}:1: no header row")
        start = reader.line_num + 1
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields where the header has {len(header)}")
            yield Record(dict(zip(header, row)), where)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: cannot parse the row ({exc})") from None


def load_splits(data: str | None, val_data: str | None, val_fraction: float, seed: int
                ) -> tuple[list[Record], list[Record]]:  # fmt: skip
    """(train, val) records: val from `val_data`, else a prepared directory's val split, else a seeded
    `val_fraction` of `data`."""
    if not data:
        raise DataError("no fine-tuning data given (pass a data file or directory, or set finetune.data)")
    train = read_records(data, "train")
    if val_data:
        return train, read_records(val_data, "val")
    if Path(data).is_dir() and split_path(data, "val").is_file():
        return train, read_records(data, "val")
    if not 0.0 < val_fraction < 1.0 or len(train) < 2:
        raise DataError(
            f"{data}: no validation data; give finetune.val_data, or a finetune.val_fraction in (0, 1) "
            f"of at least 2 records (have {len(train)})"
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(train) * val_fraction))
    held = set(order[:n_val])
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]
