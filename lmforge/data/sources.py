"""Readers: files, directories and globs of .txt .jsonl .json .csv .tsv .parquet (optionally .gz / .zst)
into a stream of `Doc`s, each with `source` = "file:line".

Everything streams: line-based formats are read one line at a time in binary with a length limit, so a
single over-large record (over `data.reader.max_record_mb`) is detected without ever holding it whole;
a .json array is parsed element by element; parquet is read a batch of rows at a time. A bad record
(invalid UTF-8, binary bytes, broken JSON, a missing field, too large) goes to `BadRecords`, which either
raises a one-line `DataError` naming the file and line, or counts and skips it (`run.on_error=skip`).
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from lmforge.config import ReaderConfig
from lmforge.data.steps import Doc, StepStats
from lmforge.errors import DataError

log = logging.getLogger("lmforge")

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
COMPRESSIONS = (".gz", ".zst")
_CHUNK = 1 << 20  # bytes read at a time where a format has no natural record boundary
_GLOB_CHARS = re.compile(r"[*?\[]")
_INT = re.compile(r"-?\d+")
_NL = b"\n"


class _StopFile(Exception):
    """Raised inside a reader when a skipped fault leaves the rest of the file unreadable."""


class BadRecords:
    """What a bad record does: raise a one-line DataError, or (on_error=skip) get counted and skipped."""

    def __init__(self, on_error: str = "raise", keep_messages: int = 20) -> None:
        self.skip = on_error == "skip"
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []
        self._keep = keep_messages

    def __call__(self, where: str, reason: str, message: str) -> None:
        text = f"{where}: {message}"
        if not self.skip:
            raise DataError(text)
        self.counts[reason] += 1
        if len(self.messages) < self._keep:
            self.messages.append(text)
            log.warning("skipped: %s", text)


# ---------------------------------------------------------------------------------------------------------
# Finding and opening files
# ---------------------------------------------------------------------------------------------------------


def file_format(path: Path) -> tuple[str | None, str | None]:
    """(format suffix, compression suffix) from the file name, e.g. data.jsonl.zst -> ('.jsonl', '.zst')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    fmt = suffixes[-1] if suffixes and suffixes[-1] in FORMATS else None
    return fmt, compression


def _supported_in(directory: Path) -> list[Path]:
    files = sorted(
        f for f in directory.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(directory).parts)
    )
    kept = [f for f in files if file_format(f)[0] is not None]
    # A README.md or a license beside the data is not data: skipped, but said so.
    for f in files:
        if file_format(f)[0] is None:
            log.info("skipping %s (not one of %s)", f, " ".join(FORMATS))
    return kept


def resolve_inputs(patterns: list[str]) -> list[Path]:
    """Files, directories (their supported files, recursively) and globs -> a list of files, in order."""
    if not patterns:
        raise DataError("no inputs: name files, directories or globs (or set data.inputs)")
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if _GLOB_CHARS.search(pattern) and not path.exists():
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            if not matches:
                raise DataError(f"no files match '{pattern}'")
            for m in matches:
                files.extend(_supported_in(m) if m.is_dir() else [m] if file_format(m)[0] else [])
        elif path.is_dir():
            found = _supported_in(path)
            if not found:
                raise DataError(f"{pattern}: no {'/'.join(FORMATS)} files in this directory")
            files.extend(found)
        elif path.is_file():
            fmt, _ = file_format(path)
            if fmt is None:
                raise DataError(f"{pattern}: unsupported file type (expected {' '.join(FORMATS)}, optionally .gz/.zst)")
            files.append(path)
        else:
            raise DataError(f"no such file or directory: {pattern}")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise DataError(f"no supported files in {' '.join(patterns)}")
    return unique


def open_binary(path: Path, compression: str | None) -> BinaryIO:
    """A buffered binary stream of the file's (decompressed) bytes."""
    if compression == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == ".zst":
        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return open(path, "rb")  # the caller closes it


# ---------------------------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------------------------


class Reader:
    """Reads every input file into documents; counts files, bytes, documents and characters."""

    name = "read"

    def __init__(self, cfg: ReaderConfig, bad: BadRecords) -> None:
        self.cfg = cfg
        self.bad = bad
        self.limit = max(1, int(cfg.max_record_mb * (1 << 20)))  # bytes
        self.stats = StepStats()
        if csv.field_size_limit() < self.limit:
            csv.field_size_limit(self.limit)

    def __call__(self, files: list[Path]) -> Iterator[Doc]:
        for path in files:
            self.stats.counters["files"] += 1
            self.stats.counters["bytes"] += path.stat().st_size
            for doc in self.read_file(path):
                self.stats.docs_out += 1
                self.stats.chars_out += len(doc.text)
                yield doc

    def read_file(self, path: Path) -> Iterator[Doc]:
        fmt, compression = file_format(path)
        if fmt == ".parquet":
            if compression:
                raise DataError(f"{path}: compressed parquet is not supported (parquet compresses internally)")
            yield from self._parquet(path)
            return
        try:
            with open_binary(path, compression) as f:
                if not f.peek(1):  # type: ignore[attr-defined]
                    self.bad(str(path), "empty_file", "empty file")
                    return
                if fmt == ".txt":
                    yield from self._txt(f, path)
                elif fmt == ".jsonl":
                    yield from self._jsonl(f, path)
                elif fmt == ".json":
                    yield from self._json(f, path)
                else:
                    yield from self._csv(f, path, fmt or ".csv")
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            # gzip and zstd report corrupt streams this way; a plain read error too.
            self.bad(str(path), "corrupt_file", f"cannot read ({exc})")

    # -- line-based formats ---------------------------------------------------------------------------

    def _too_large(self, where: str) -> None:
        self.bad(where, "record_too_large",
                 f"record larger than data.reader.max_record_mb={self.cfg.max_record_mb:g} MB")

    def _lines(self, f: BinaryIO, path: Path) -> Iterator[tuple[int, str | None]]:
        """(line number, decoded line) per line; None in place of a bad line that was skipped."""
        lineno = 0
        while raw := f.readline(self.limit + 1):
            lineno += 1
            if len(raw) > self.limit and raw[-1:] != b"\n":
                while raw and raw[-1:] != b"\n":  # drain the rest of the line without keeping it
                    raw = f.readline(_CHUNK)
                self._too_large(f"{path}:{lineno}")
                yield lineno, None
                continue
            text = self._decode(raw, f"{path}:{lineno}")
            if text is not None and lineno == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text
            yield lineno, text

    def _decode(self, raw: bytes, where: str, base_line: int | None = None) -> str | None:
        """Strict UTF-8, no NUL bytes; with base_line, `where` gets the line of the fault inside `raw`."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if base_line is not None:
                where = f"{where}:{base_line + raw.count(_NL, 0, exc.start)}"
            self.bad(where, "invalid_utf8", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
            return None
        nul = text.find("\x00")
        if nul >= 0:
            if base_line is not None:
                where = f"{where}:{base_line + text.count(chr(10), 0, nul)}"
            self.bad(where, "binary", "binary data (NUL byte), not text")
            return None
        return text

    def _txt(self, f: BinaryIO, path: Path) -> Iterator[Doc]:
        mode = self.cfg.txt_mode
        if mode == "file":
            raw = f.read(self.limit + 1)
            if len(raw) > self.limit:
                self._too_large(f"{path}:1")
                return
            text = self._decode(raw, str(path), base_line=1)
            if text is not None:
                yield Doc(text.removeprefix("\ufeff"), f"{path}:1")
        elif mode == "line":
            for lineno, line in self._lines(f, path):
                if line is not None and line.strip():
                    yield Doc(line.rstrip("\r\n"), f"{path}:{lineno}")
        else:  # paragraph: blocks separated by blank lines
            block: list[str] = []
            start, size, dropping = 0, 0, False
            for lineno, line in self._lines(f, path):
                if line is None:
                    block, size, dropping = [], 0, True  # the block lost a line: drop what is left of it
                    continue
                if not line.strip():
                    if block and not dropping:
                        yield Doc("".join(block).rstrip("\r\n"), f"{path}:{start}")
                    block, size, dropping = [], 0, False
                    continue
                if dropping:
                    continue
                if not block:
                    start = lineno
                block.append(line)
                size += len(line)
                if size > self.limit:
                    self._too_large(f"{path}:{start}")
                    block, size, dropping = [], 0, True
            if block and not dropping:
                yield Doc("".join(block).rstrip("\r\n"), f"{path}:{start}")

    def _jsonl(self, f: BinaryIO, path: Path) -> Iterator[Doc]:
        for lineno, line in self._lines(f, path):
            if line is None or not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                self.bad(where, "invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            doc = self._doc(value, where)
            if doc is not None:
                yield doc

    def _json(self, f: BinaryIO, path: Path) -> Iterator[Doc]:
        """A JSON array of objects, or a sequence of JSON values (JSON lines, pretty-printed or not)."""
        try:
            for lineno, index, value in self._json_values(f, path):
                # Items of an array often share a line (a one-line file): the item index tells them apart.
                where = f"{path}:{lineno}" if index is None else f"{path}:{lineno}[{index}]"
                doc = self._doc(value, where)
                if doc is not None:
                    yield doc
        except _StopFile:
            return  # a skipped encoding fault: the rest of this file cannot be parsed

    def _json_values(self, f: BinaryIO, path: Path) -> Iterator[tuple[int, int | None, Any]]:
        """Stream top-level values (or a top-level array's items) with their starting line.

        The file is decoded a chunk at a time and each value parsed with `raw_decode` once it is complete
        in the buffer, so memory holds one record plus a chunk, never the whole file.
        """
        decoder = json.JSONDecoder()
        utf8 = codecs.getincrementaldecoder("utf-8")()
        buf, pos, line = "", 0, 1  # `line` is the line number at `pos`
        eof = False
        bytes_line = 1  # line count of bytes decoded so far, to place an encoding error

        def more(want: int = _CHUNK) -> bool:
            nonlocal buf, pos, eof, bytes_line
            if eof:
                return False
            raw = f.read(max(want, _CHUNK))
            try:
                text = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                bad_line = bytes_line + raw.count(b"\n", 0, max(exc.start, 0))
                self.bad(f"{path}:{bad_line}", "invalid_utf8", "not valid UTF-8")
                raise _StopFile from None
            bytes_line += raw.count(b"\n")
            if "\x00" in text:
                nul_line = line + buf.count("\n", pos) + text.count("\n", 0, text.find("\x00"))
                self.bad(f"{path}:{nul_line}", "binary", "binary data (NUL byte), not text")
                raise _StopFile
            buf = buf[pos:] + text  # drop what is parsed so the buffer stays one record + a chunk
            pos = 0
            eof = not raw
            return bool(raw) or bool(text)

        def skip_ws() -> str | None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return None

        more()
        first = skip_ws()
        in_array = first == "["
        if in_array:
            pos += 1
        index = 0
        while True:
            ch = skip_ws()
            if ch is None:
                if in_array:
                    self.bad(f"{path}:{line}", "invalid_json", "not valid JSON (unterminated array)")
                return
            if in_array and ch == "]":
                return
            if in_array and index > 0:
                if ch != ",":
                    self.bad(f"{path}:{line}", "invalid_json", f"not valid JSON (expected ',' or ']', got {ch!r})")
                    return
                pos += 1
                if skip_ws() is None:
                    continue
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                    # A value that ends exactly at the buffer's end may continue in the next chunk.
                    more(len(buf) - pos)
                except json.JSONDecodeError as exc:
                    pending = len(buf) - pos
                    if pending > self.limit:
                        self._too_large(f"{path}:{line}")
                        return  # no way to find where the next record starts
                    if not eof:
                        more(pending)  # the record may just be incomplete in the buffer: read on, retry
                        continue
                    err_line = line + buf.count("\n", pos, exc.pos)
                    self.bad(f"{path}:{err_line}", "invalid_json", f"not valid JSON ({exc.msg})")
                    return  # a broken array or stream cannot be resynchronised reliably
            if end - pos > self.limit:
                self._too_large(f"{path}:{line}")
            else:
                yield line, index if in_array else None, value
            line += buf.count("\n", pos, end)
            pos = end
            index += 1

    def _csv(self, f: BinaryIO, path: Path, fmt: str) -> Iterator[Doc]:
        delimiter = self.cfg.csv_delimiter or ("\t" if fmt == ".tsv" else ",")
        # TSV files (GLUE's among them) do not quote: a '"' inside a sentence is just a character.
        quoting = csv.QUOTE_NONE if fmt == ".tsv" else csv.QUOTE_MINIMAL

        def lines() -> Iterator[str]:
            for _, line in self._lines(f, path):
                yield "\n" if line is None else line  # a skipped bad line reads as an empty row

        reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            self.bad(f"{path}:1", "bad_row", f"cannot parse the header ({exc})")
            return
        if not header:
            self.bad(f"{path}:1", "empty_file", "no header row")
            return
        header = [h.strip() for h in header]
        if not self._check_columns(header, f"{path}:1", "column"):
            return
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.bad(f"{path}:{start}", "bad_row", f"cannot parse the row ({exc})")
                start = reader.line_num + 1
                continue
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                self.bad(where, "bad_row", f"{len(row)} fields where the header has {len(header)}")
                continue
            record: dict[str, Any] = dict(zip(header, row))
            label = self._label_key(record)
            if label is not None and _INT.fullmatch(record[label].strip()):
                record[label] = int(record[label])  # CSV has no types; class ids are integers
            doc = self._doc(record, where)
            if doc is not None:
                yield doc

    # -- parquet ----------------------------------------------------------------------------------------

    def _parquet(self, path: Path) -> Iterator[Doc]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if path.stat().st_size == 0:
            self.bad(str(path), "empty_file", "empty file")
            return
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            self.bad(str(path), "corrupt_file", f"not a readable parquet file ({exc})")
            return
        names = list(pf.schema_arrow.names)
        if not self._check_columns(names, str(path), "column"):
            return
        wanted = [c for c in [self.cfg.text_field, *self.cfg.instruction_fields, self._label_key(names)] if c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=list(dict.fromkeys(wanted))):
            for record in batch.to_pylist():
                row += 1
                doc = self._doc(record, f"{path}:{row}")
                if doc is not None:
                    if len(doc.text) > self.limit:
                        self._too_large(f"{path}:{row}")
                        continue
                    yield doc

    # -- records -> documents ---------------------------------------------------------------------------

    def _label_key(self, keys: Any) -> str | None:
        if self.cfg.label_field is not None:
            return self.cfg.label_field if self.cfg.label_field in keys else None
        return "label" if "label" in keys else None  # a `label` column is kept even when not asked for

    def _is_instruction(self, keys: Any) -> bool:
        fields = self.cfg.instruction_fields
        # The prompt and the response must be there; middle parts (Alpaca's `input`) may be missing.
        return bool(fields) and fields[0] in keys and fields[-1] in keys

    def _check_columns(self, keys: list[str], where: str, what: str) -> bool:
        """For tabular files: the text (or instruction) and label columns exist; else one bad 'record'."""
        if self.cfg.text_field not in keys and not self._is_instruction(keys):
            self.bad(where, "missing_field", f"no {what} '{self.cfg.text_field}' (data.reader.text_field); "
                     f"available: {', '.join(keys)}")
            return False
        if self.cfg.label_field is not None and self.cfg.label_field not in keys:
            self.bad(where, "missing_field", f"no {what} '{self.cfg.label_field}' (data.reader.label_field); "
                     f"available: {', '.join(keys)}")
            return False
        return True

    def _doc(self, record: Any, where: str) -> Doc | None:
        if not isinstance(record, dict):
            self.bad(where, "not_an_object", f"expected a JSON object, got {type(record).__name__}")
            return None
        fields: dict[str, Any] = {}
        text_fields: tuple[str, ...] = ()
        if self.cfg.text_field in record:
            text = record[self.cfg.text_field]
        elif self._is_instruction(record):
            parts = []
            for key in self.cfg.instruction_fields:
                value = record.get(key)
                value = "" if value is None else value
                if not isinstance(value, str):
                    self.bad(where, "bad_field", f"field '{key}' is {type(value).__name__}, not text")
                    return None
                fields[key] = value
                if value.strip():
                    parts.append(value.strip())
            text = "\n\n".join(parts)
            text_fields = tuple(self.cfg.instruction_fields)
        else:
            self.bad(where, "missing_field",
                     f"no field '{self.cfg.text_field}' (data.reader.text_field) and no instruction fields "
                     f"{'/'.join(self.cfg.instruction_fields)}; available: {', '.join(map(str, record)) or 'none'}")
            return None
        if text is None:
            text = ""
        if not isinstance(text, str):
            self.bad(where, "bad_field", f"field '{self.cfg.text_field}' is {type(text).__name__}, not text")
            return None
        label = self._label_key(record)
        if self.cfg.label_field is not None and label is None:
            self.bad(where, "missing_field", f"no field '{self.cfg.label_field}' (data.reader.label_field); "
                     f"available: {', '.join(map(str, record))}")
            return None
        if label is not None:
            fields["label"] = record[label]
        return Doc(text, where, fields, text_fields)
