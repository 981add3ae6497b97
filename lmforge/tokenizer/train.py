"""`lmforge tokenizer train`: a byte-level BPE (GPT-2 style) or char-level tokenizer from text.

Inputs are prepared data directories (their train split), .txt files (one document each) or .jsonl files
(a "text" field per line). Text is streamed to the trainer in batches of ~1 KB pieces, up to
`tokenizer.max_train_mb`. With `tokenizer.jieba`, Chinese is segmented into words for training only, so
merges stay inside words; the saved tokenizer.json is the same standard byte-level BPE either way.

Special tokens come first in the vocabulary: bos, eos, pad, unk, then the chat tokens. Encoding adds none
of them by itself (no post-processor): the encode stage puts an eos after each document.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.config import Config, TokenizerConfig
from lmforge.data.documents import iter_records, split_path
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.runs import atomic_path, atomic_write_json, start_run
from lmforge.tokenizer import CONFIG_FILE, SPECIAL_TOKENS_FILE, TOKENIZER_FILE
from lmforge.tokenizer.chat_template import ChatTokens, chat_template
from lmforge.tokenizer.encode import iter_pieces

log = logging.getLogger("lmforge")

BYTE_ALPHABET = 256
READ_BLOCK_CHARS = 1 << 20  # .txt files are read in blocks of this many characters
# The trainer counts words per string in parallel: ~1 KB strings balance the cores best (64 KB pieces,
# as encode uses, train ~15% slower). Cuts fall where the pre-tokenizer splits anyway (see encode.py).
TRAIN_PIECE_CHARS = 1024
BATCH_ITEMS = 256  # strings per batch handed to the trainer


def special_tokens(tc: TokenizerConfig) -> list[str]:
    """bos, eos, pad, unk, then the chat tokens, without repeats; these take ids 0, 1, 2, ..."""
    tokens = [tc.bos_token, tc.eos_token, tc.pad_token, tc.unk_token, *tc.chat_tokens]
    for key, token in zip(["bos_token", "eos_token", "pad_token", "unk_token"], tokens):
        if not token:
            raise ConfigError(f"tokenizer.{key} must be a non-empty string")
    if any(not t for t in tc.chat_tokens):
        raise ConfigError("tokenizer.chat_tokens: every token must be a non-empty string")
    return list(dict.fromkeys(tokens))


def check_vocab_size(tc: TokenizerConfig) -> None:
    n_special = len(special_tokens(tc))
    floor = (BYTE_ALPHABET if tc.kind == "bpe" else 1) + n_special
    if tc.vocab_size < floor:
        what = "the 256-byte alphabet" if tc.kind == "bpe" else "one character"
        raise ConfigError(
            f"tokenizer.vocab_size={tc.vocab_size} is too small for {tc.kind}: "
            f"{what} + {n_special} special tokens need at least {floor}"
        )


# ---------------------------------------------------------------------------------------------------------
# Training text
# ---------------------------------------------------------------------------------------------------------


def resolve_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Each input as the file to read: a prepared directory's train split, or a .txt/.jsonl file."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            train = split_path(item, "train")
            if not train.is_file():
                raise DataError(f"{item}: no train split ({train.name}) in this prepared data directory")
            files.append(train)
        elif item.is_file():
            if item.suffix.lower() not in (".txt", ".jsonl"):
                raise DataError(
                    f"{item}: unsupported input (expected a prepared data directory, .txt or .jsonl)"
                )
            files.append(item)
        else:
            raise DataError(f"input not found: {item}")
    if not files:
        raise LmforgeError("tokenizer train: no inputs (give a prepared data directory or .txt/.jsonl files)")
    return files


def _read_blocks(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            while block := f.read(READ_BLOCK_CHARS):
                yield block
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _iter_jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{path}:{lineno}: not a JSON record") from None
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: record has no 'text' string")
                yield text
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _iter_prepared_texts(path: Path) -> Iterator[str]:
    for lineno, record in enumerate(iter_records(path), 1):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: record has no 'text' string")
        yield text


def iter_documents(path: Path) -> Iterator[Iterator[str]]:
    """Each document of one input file, as an iterator over blocks of its text."""
    if path.name.endswith(".jsonl.zst"):
        yield from (iter([t]) for t in _iter_prepared_texts(path))
    elif path.suffix.lower() == ".jsonl":
        yield from (iter([t]) for t in _iter_jsonl_texts(path))
    else:
        yield _read_blocks(path)


@dataclass
class TrainingText:
    """The training text of some input files as ~1 KB pieces, stopping after `max_bytes` bytes.

    Counts what it gave out (`documents`, `chars`, `bytes`) as it is consumed.
    """

    files: list[Path]
    max_bytes: int | None = None
    documents: int = 0
    chars: int = 0
    bytes: int = 0

    def pieces(self) -> Iterator[str]:
        for path in self.files:
            for blocks in iter_documents(path):
                self.documents += 1
                for piece in iter_pieces(blocks, TRAIN_PIECE_CHARS):
                    size = len(piece.encode("utf-8"))
                    if self.max_bytes is not None and self.bytes + size > self.max_bytes:
                        piece = piece.encode("utf-8")[: self.max_bytes - self.bytes].decode("utf-8", "ignore")
                        size = len(piece.encode("utf-8"))
                    self.chars += len(piece)
                    self.bytes += size
                    if piece:
                        yield piece
                    if self.max_bytes is not None and self.bytes >= self.max_bytes:
                        return


def jieba_words(text: str) -> list[str]:
    """`text` cut into words by jieba, a run of whitespace kept on the front of the word after it (so
    " world" stays one pre-token, as the byte-level pre-tokenizer would have it)."""
    import jieba

    words: list[str] = []
    pending = ""
    for word in jieba.cut(text):
        if word.isspace():
            pending += word
        else:
            words.append(pending + word)
            pending = ""
    if pending:
        words.append(pending)
    return words


def batched(items: Iterable[str], expand: Callable[[str], list[str]] | None = None) -> Iterator[list[str]]:
    """Lists of about BATCH_ITEMS strings; `expand` turns each item into several (jieba words)."""
    batch: list[str] = []
    for item in items:
        if expand is None:
            batch.append(item)
        else:
            batch.extend(expand(item))
        if len(batch) >= BATCH_ITEMS:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------------------------------------


def train_bpe(texts: Iterable[str], tc: TokenizerConfig, show_progress: bool = True) -> Tokenizer:
    """Byte-level BPE over `texts` (GPT-2's pre-tokenizer, no prefix space, no post-processor)."""
    check_vocab_size(tc)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tc.vocab_size,
        min_frequency=tc.min_frequency,
        special_tokens=special_tokens(tc),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    if tc.jieba:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        tokenizer.train_from_iterator(batched(texts, jieba_words), trainer=trainer)
    else:
        tokenizer.train_from_iterator(batched(texts), trainer=trainer)
    return tokenizer


def char_tokenizer(vocab: Iterable[str], specials: list[str], unk_token: str) -> Tokenizer:
    """A tokenizer with one token per character of `vocab`, after the special tokens."""
    ordered = list(dict.fromkeys([*specials, *vocab]))
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(ordered)}, unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(specials)
    return tokenizer


def train_char(texts: Iterable[str], tc: TokenizerConfig) -> Tokenizer:
    """Every character seen (the most frequent ones if there are more than vocab_size allows), sorted."""
    check_vocab_size(tc)
    specials = special_tokens(tc)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    for token in specials:
        counts.pop(token, None)  # a one-character special token is already in the vocabulary
    room = tc.vocab_size - len(specials)
    if len(counts) > room:
        log.warning(
            f"{len(counts):,} distinct characters; keeping the {room:,} most frequent (tokenizer.vocab_size)"
        )
        chars = sorted(c for c, _ in counts.most_common(room))
    else:
        chars = sorted(counts)
    return char_tokenizer(chars, specials, tc.unk_token)


def train_tokenizer(texts: Iterable[str], tc: TokenizerConfig, show_progress: bool = True) -> Tokenizer:
    if tc.kind == "char":
        return train_char(texts, tc)
    return train_bpe(texts, tc, show_progress=show_progress)


# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------


def tokenizer_config(tc: TokenizerConfig, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: what `transformers.AutoTokenizer` needs beyond tokenizer.json."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tc.bos_token,
        "eos_token": tc.eos_token,
        "pad_token": tc.pad_token,
        "unk_token": tc.unk_token,
        "additional_special_tokens": list(dict.fromkeys(tc.chat_tokens)),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        "lmforge_kind": tc.kind,
    }
    if tc.chat_tokens:
        config["chat_template"] = chat_template(ChatTokens.from_list(tc.chat_tokens))
    return config


def special_tokens_map(tc: TokenizerConfig) -> dict[str, Any]:
    return {
        "bos_token": tc.bos_token,
        "eos_token": tc.eos_token,
        "pad_token": tc.pad_token,
        "unk_token": tc.unk_token,
        "additional_special_tokens": list(dict.fromkeys(tc.chat_tokens)),
    }


def save_tokenizer(
    tokenizer: Tokenizer, out_dir: str | Path, tc: TokenizerConfig, model_max_length: int
) -> list[Path]:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json in `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    paths = [out_dir / TOKENIZER_FILE, out_dir / CONFIG_FILE, out_dir / SPECIAL_TOKENS_FILE]
    with atomic_path(paths[0]) as tmp:
        tokenizer.save(str(tmp))
    atomic_write_json(paths[1], tokenizer_config(tc, model_max_length))
    atomic_write_json(paths[2], special_tokens_map(tc))
    return paths


def run_train(cfg: Config, out: str | Path | None = None) -> Path:
    """Train on `cfg.tokenizer.inputs` and save the tokenizer in the run directory, which is returned."""
    tc = cfg.tokenizer
    check_vocab_size(tc)
    if tc.chat_tokens:
        ChatTokens.from_list(tc.chat_tokens)
    if tc.max_train_mb is not None and tc.max_train_mb <= 0:
        raise ConfigError(f"tokenizer.max_train_mb must be positive, got {tc.max_train_mb}")
    files = resolve_inputs(tc.inputs)
    max_bytes = None if tc.max_train_mb is None else int(tc.max_train_mb * 1e6)

    with start_run("tokenizer", cfg, out) as run:
        run.add_inputs(files)
        started = time.perf_counter()
        text = TrainingText(files, max_bytes=max_bytes)
        tokenizer = train_tokenizer(text.pieces(), tc)
        seconds = time.perf_counter() - started
        if text.chars == 0:
            raise DataError(f"no training text in {', '.join(map(str, files))}")
        model_max_length = tc.model_max_length or cfg.model.block_size
        for path in save_tokenizer(tokenizer, run.dir, tc, model_max_length):
            run.add_output(path)
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        run.extra["tokenizer"] = {
            "kind": tc.kind,
            "vocab_size": vocab_size,
            "documents": text.documents,
            "train_chars": text.chars,
            "train_bytes": text.bytes,
            "seconds": round(seconds, 3),
        }
        limited = " (tokenizer.max_train_mb)" if max_bytes is not None and text.bytes >= max_bytes else ""
        log.info(
            f"{tc.kind} tokenizer: vocab size {vocab_size:,}, trained on {text.bytes / 1e6:.2f} MB{limited} "
            f"of {text.documents:,} documents in {seconds:.2f}s -> {run.dir / TOKENIZER_FILE}"
        )
    return run.dir
