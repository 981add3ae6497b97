"""`lmforge tokenizer encode`: every split of a prepared data directory into flat token shards.

Output (the contract the training stage reads)::

    <out>/<split>.bin            little-endian uint16 (vocab < 65,536) or uint32 tokens, an eos after
                                 every document; <split>_000.bin, _001.bin ... when a split has more
                                 than tokenizer.shard_max_tokens tokens
    <out>/tokenizer.json         copies of the tokenizer, so the directory describes itself
    <out>/tokenizer_config.json
    <out>/meta.json              dtype, vocab_size, eos/bos/pad/unk ids, tokenizer sha256, per split:
                                 files (name, tokens, sha256), tokens, documents, chars, bytes

Speed comes from `Tokenizer.encode_batch_fast`, which spreads a batch over every core. A long document
(a novel is one 2 MB record) is cut into ~64 KB pieces first so that it, too, spreads; the cuts fall
where the byte-level pre-tokenizer splits anyway, so the tokens are exactly those of the whole document.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from lmforge.config import Config
from lmforge.data.documents import available_splits, iter_records, split_path
from lmforge.errors import DataError, LmforgeError
from lmforge.runs import atomic_path, atomic_write_json, sha256_file, start_run
from lmforge.tokenizer import (
    CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_FILE,
    load_tokenizer,
    read_tokenizer_config,
    tokenizer_file,
)

log = logging.getLogger("lmforge")

PIECE_CHARS = 64 * 1024  # target length of the pieces a long document is cut into
# Text handed to one encode_batch call: enough pieces to keep every core busy, small enough for progress.
BATCH_CHARS = max(1 << 20, 8 * PIECE_CHARS * (os.cpu_count() or 1))
META_FILE = "meta.json"
META_FORMAT = "lmforge-token-shards/1"

# ---------------------------------------------------------------------------------------------------------
# Cutting long text where the pre-tokenizer cuts anyway
# ---------------------------------------------------------------------------------------------------------
#
# GPT-2's pre-tokenizer regex (`'s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`) never
# joins a non-whitespace character with the whitespace after it, and what it does from a given position
# on depends only on the text from there. So between a non-whitespace character and a whitespace one,
# cutting the text changes nothing. (Right after a newline is *not* such a point: "a\n\nB" splits as
# "a" "\n" "\n" "B", but "a\n\n" alone ends in one "\n\n" token.) We cut before the whitespace that ends
# a line, or failing that before any space. `\S` is Python's, which excludes every Unicode White_Space
# character, so it is non-whitespace for the Rust regex too; the whitespace after the cut is ASCII.
_LINE_CUT = re.compile(r"\S(?=[ \t\r]*\n)")
_SPACE_CUT = re.compile(r"\S(?=[ \t\r\n])")


def _cut_point(text: str, start: int, piece_chars: int) -> int | None:
    """A safe cut at least `piece_chars` after `start`, preferring a line end; None if there is none."""
    lo = start + piece_chars - 1
    m = _LINE_CUT.search(text, lo, lo + piece_chars) or _SPACE_CUT.search(text, lo)
    return m.end() if m else None


def iter_pieces(blocks: Iterable[str], piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Consecutive pieces of the text `blocks` join into, each about `piece_chars` long (a text with
    no safe cut stays whole). Encoding the pieces one by one gives exactly the tokens of the whole text,
    for byte-level BPE and for char-level tokenizers alike. An empty text gives one empty piece."""
    buffer = ""
    for block in blocks:
        buffer = buffer + block if buffer else block
        start = 0
        while len(buffer) - start > 2 * piece_chars:
            cut = _cut_point(buffer, start, piece_chars)
            if cut is None:
                break
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    start = 0
    while len(buffer) - start > piece_chars + piece_chars // 2:
        cut = _cut_point(buffer, start, piece_chars)
        if cut is None:
            break
        yield buffer[start:cut]
        start = cut
    yield buffer[start:]


# ---------------------------------------------------------------------------------------------------------
# Shard files
# ---------------------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 65536 else np.dtype("<u4")


def shard_names(split: str, count: int) -> list[str]:
    return [f"{split}.bin"] if count == 1 else [f"{split}_{i:03d}.bin" for i in range(count)]


@dataclass
class _Shard:
    tmp: Path
    file: IO[bytes]
    sha256: Any = field(default_factory=hashlib.sha256)
    tokens: int = 0


class ShardWriter:
    """Appends tokens to `<split>.bin`, rolling over to numbered shards past `max_tokens` tokens.

    Shards are written under temporary names and renamed by `finish()`, which also removes shard files
    of this split left by an earlier run; `abort()` deletes the temporaries.
    """

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, max_tokens: int) -> None:
        if max_tokens < 1:
            raise LmforgeError(f"tokenizer.shard_max_tokens must be at least 1, got {max_tokens}")
        self.out_dir, self.split, self.dtype, self.max_tokens = out_dir, split, dtype, max_tokens
        self.shards: list[_Shard] = []

    def _open(self) -> _Shard:
        tmp = self.out_dir / f".{self.split}_{len(self.shards):03d}.bin.tmp-{os.getpid()}"
        shard = _Shard(tmp=tmp, file=open(tmp, "wb"))  # noqa: SIM115 - closed in finish()/abort()
        self.shards.append(shard)
        return shard

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            shard = self.shards[-1] if self.shards else self._open()
            if shard.tokens >= self.max_tokens:
                shard = self._open()
            chunk, tokens = tokens[: self.max_tokens - shard.tokens], tokens[self.max_tokens - shard.tokens :]
            view = memoryview(chunk).cast("B")
            shard.file.write(view)
            shard.sha256.update(view)
            shard.tokens += len(chunk)

    def finish(self) -> list[dict[str, Any]]:
        for shard in self.shards:
            shard.file.close()
        for stale in [
            *self.out_dir.glob(f"{self.split}.bin"),
            *self.out_dir.glob(f"{self.split}_[0-9]*.bin"),
        ]:
            stale.unlink()
        files = []
        for name, shard in zip(shard_names(self.split, len(self.shards)), self.shards):
            os.replace(shard.tmp, self.out_dir / name)
            files.append({"name": name, "tokens": shard.tokens, "sha256": shard.sha256.hexdigest()})
        self.shards = []
        return files

    def abort(self) -> None:
        for shard in self.shards:
            shard.file.close()
            shard.tmp.unlink(missing_ok=True)
        self.shards = []


# ---------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SplitStats:
    files: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    chars: int = 0
    bytes: int = 0
    seconds: float = 0.0


def encode_texts(tokenizer: Any, texts: list[str], eos_id: int | None, dtype: np.dtype) -> np.ndarray:
    """Token ids of `texts` laid end to end, `eos_id` after each one (None: nothing between).

    Long texts are cut into pieces so that one `encode_batch_fast` call spreads over all cores.
    """
    pieces: list[str] = []
    last: list[bool] = []  # piece i ends its text
    for text in texts:
        start = len(pieces)
        pieces.extend(iter_pieces([text]))
        last.extend([False] * (len(pieces) - start - 1) + [True])
    encodings = tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
    parts: list[np.ndarray] = []
    eos = np.array([eos_id] if eos_id is not None else [], dtype=dtype)
    for encoding, ends in zip(encodings, last):
        parts.append(np.array(encoding.ids, dtype=dtype))
        if ends:
            parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _iter_texts(path: Path) -> Iterator[str]:
    for lineno, record in enumerate(iter_records(path), 1):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: record has no 'text' string")
        yield text


def _progress(split: str) -> Any:
    from tqdm import tqdm

    return tqdm(desc=f"encode {split}", unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr)


def encode_split(
    tokenizer: Any, path: Path, writer: ShardWriter, eos_id: int, batch_chars: int = BATCH_CHARS
) -> SplitStats:
    """Encode one prepared split file through `writer`; the caller finishes or aborts the writer."""
    stats = SplitStats()
    started = time.perf_counter()
    batch: list[str] = []
    batch_chars_now = batch_bytes = 0
    with _progress(writer.split) as bar:

        def flush() -> None:
            nonlocal batch, batch_chars_now, batch_bytes
            tokens = encode_texts(tokenizer, batch, eos_id, writer.dtype)
            writer.write(tokens)
            stats.tokens += len(tokens)
            bar.update(batch_bytes)
            batch, batch_chars_now, batch_bytes = [], 0, 0

        for text in _iter_texts(path):
            n_bytes = len(text.encode("utf-8"))
            batch.append(text)
            batch_chars_now += len(text)
            batch_bytes += n_bytes
            stats.documents += 1
            stats.chars += len(text)
            stats.bytes += n_bytes
            if batch_chars_now >= batch_chars:
                flush()
        if batch:
            flush()
    stats.seconds = time.perf_counter() - started
    return stats


@dataclass(frozen=True)
class SpecialIds:
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    unk_id: int | None


def special_ids(tokenizer: Any, tok_config: dict[str, Any], cfg: Config, where: Path) -> SpecialIds:
    """Ids of the special tokens named in tokenizer_config.json, else in the `tokenizer` config."""
    tc = cfg.tokenizer

    def token_id(key: str, default: str) -> int | None:
        token = tok_config.get(key, default)
        if isinstance(token, dict):  # {"content": ...} as transformers sometimes writes it
            token = token.get("content")
        return tokenizer.token_to_id(token) if isinstance(token, str) else None

    eos = token_id("eos_token", tc.eos_token)
    if eos is None:
        name = tok_config.get("eos_token", tc.eos_token)
        raise DataError(f"{where}: the eos token {name!r} is not in the vocabulary (set tokenizer.eos_token)")
    return SpecialIds(
        eos_id=eos,
        bos_id=token_id("bos_token", tc.bos_token),
        pad_id=token_id("pad_token", tc.pad_token),
        unk_id=token_id("unk_token", tc.unk_token),
    )


def _copy_into(src: Path, out_dir: Path) -> Path:
    dest = out_dir / src.name
    if dest.resolve() != src.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    return dest


def run_encode(cfg: Config, data_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Encode every split of `data_dir` with the tokenizer at `cfg.tokenizer.path`; returns the shard dir."""
    tc = cfg.tokenizer
    if data_dir is None:
        raise LmforgeError("tokenizer encode: give a prepared data directory")
    if tc.path is None:
        raise LmforgeError("tokenizer encode: give --tokenizer PATH (or tokenizer.path=...)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory not found: {data_dir}")
    splits = available_splits(data_dir)
    if not splits:
        raise DataError(f"{data_dir}: no prepared splits (expected train/val/test.jsonl.zst)")
    tok_file = tokenizer_file(tc.path)
    tokenizer = load_tokenizer(tok_file)
    tok_config = read_tokenizer_config(tok_file)
    ids = special_ids(tokenizer, tok_config, cfg, tok_file)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)

    with start_run("shards", cfg, out) as run:
        run.add_inputs([tok_file, *(split_path(data_dir, s) for s in splits)])
        (run.dir / META_FILE).unlink(missing_ok=True)  # an old meta.json must not describe new shards
        copied = [_copy_into(tok_file, run.dir)]
        for name in (CONFIG_FILE, SPECIAL_TOKENS_FILE):
            if (tok_file.parent / name).is_file():
                copied.append(_copy_into(tok_file.parent / name, run.dir))

        started = time.perf_counter()
        per_split: dict[str, SplitStats] = {}
        for split in splits:
            writer = ShardWriter(run.dir, split, dtype, tc.shard_max_tokens)
            try:
                stats = encode_split(tokenizer, split_path(data_dir, split), writer, ids.eos_id)
                stats.files = writer.finish()
            finally:
                writer.abort()
            per_split[split] = stats
            log.info(
                f"{split}: {stats.tokens:,} tokens, {stats.documents:,} documents, "
                f"{stats.bytes / 1e6:.2f} MB in {stats.seconds:.2f}s "
                f"({stats.bytes / 1e6 / max(stats.seconds, 1e-9):.2f} MB/s)"
            )
        seconds = time.perf_counter() - started

        total_tokens = sum(s.tokens for s in per_split.values())
        total_bytes = sum(s.bytes for s in per_split.values())
        meta = {
            "format": META_FORMAT,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            **asdict(ids),
            "tokenizer_path": TOKENIZER_FILE,
            "tokenizer_source": str(tok_file.resolve()),
            "tokenizer_sha256": sha256_file(tok_file),
            "data_dir": str(data_dir.resolve()),
            "tokens": total_tokens,
            "documents": sum(s.documents for s in per_split.values()),
            "splits": {
                name: {k: v for k, v in asdict(s).items() if k != "seconds"} for name, s in per_split.items()
            },
        }
        for path in copied:
            run.add_output(path)
        for stats in per_split.values():
            for f in stats.files:
                run.add_output(run.dir / f["name"])
        atomic_write_json(run.dir / META_FILE, meta)
        run.add_output(run.dir / META_FILE)
        run.extra["encode"] = {"tokens": total_tokens, "bytes": total_bytes, "seconds": round(seconds, 3)}
        log.info(
            f"encoded {total_tokens:,} tokens from {total_bytes / 1e6:.2f} MB in {seconds:.2f}s "
            f"({total_bytes / 1e6 / max(seconds, 1e-9):.2f} MB/s) -> {run.dir}"
        )
    return run.dir


def read_meta(shard_dir: str | Path) -> dict[str, Any]:
    """meta.json of a shard directory."""
    path = Path(shard_dir) / META_FILE
    if not path.is_file():
        raise DataError(f"not a token-shard directory (no {META_FILE}): {shard_dir}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def load_split(shard_dir: str | Path, split: str) -> np.ndarray:
    """All tokens of one split as a read-only array (memory-mapped; several shards are concatenated)."""
    meta = read_meta(shard_dir)
    if split not in meta["splits"]:
        raise DataError(f"{shard_dir}: no split '{split}' (have {', '.join(meta['splits'])})")
    arrays = [
        np.memmap(Path(shard_dir) / f["name"], dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r")
        for f in meta["splits"][split]["files"]
        if f["tokens"]
    ]
    if not arrays:
        return np.zeros(0, dtype=meta["dtype"])
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
