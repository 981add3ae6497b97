"""The prepared-documents format shared by stages: one JSON object per line, zstd-compressed.

`<data_dir>/<split>.jsonl.zst` for split in train/val/test; each record has at least `text`, and may
carry `label`, `lang`, `source` (file:line) and the instruction fields it was read with.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from lmforge.errors import DataError

SPLITS = ("train", "val", "test")


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.jsonl.zst"


def available_splits(data_dir: str | Path) -> list[str]:
    return [s for s in SPLITS if split_path(data_dir, s).is_file()]


class JsonlZstWriter:
    """Streams records into a .jsonl.zst file (the caller provides a temporary path and renames it)."""

    def __init__(self, path: str | Path, level: int = 3) -> None:
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._zst = zstandard.ZstdCompressor(level=level, threads=-1).stream_writer(self._raw)
        self._text = io.TextIOWrapper(self._zst, encoding="utf-8", newline="\n")
        self.records = 0
        self.chars = 0

    def write(self, record: dict[str, Any]) -> None:
        self._text.write(json.dumps(record, ensure_ascii=False))
        self._text.write("\n")
        self.records += 1
        self.chars += len(record.get("text", ""))

    def close(self) -> None:
        self._text.flush()
        self._text.close()  # closes the zstd stream and the file

    def __enter__(self) -> JsonlZstWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of one prepared split, streamed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        text = io.TextIOWrapper(reader, encoding="utf-8")
        try:
            for lineno, line in enumerate(text, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{path}:{lineno}: not a JSON record") from None
        except zstandard.ZstdError as exc:
            raise DataError(f"{path}: corrupt zstd stream ({exc})") from None
