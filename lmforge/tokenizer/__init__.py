"""Tokenizers: train byte-level BPE or char-level vocabularies (`train`), encode prepared data into token
shards (`encode`), and the default chat template (`chat_template`).

A tokenizer directory holds `tokenizer.json` (the HF `tokenizers` format) beside `tokenizer_config.json`
and `special_tokens_map.json`, so `transformers.AutoTokenizer.from_pretrained(dir)` loads it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

__all__ = [
    "CONFIG_FILE",
    "SPECIAL_TOKENS_FILE",
    "TOKENIZER_FILE",
    "load_tokenizer",
    "read_tokenizer_config",
    "tokenizer_file",
]


def tokenizer_file(path: str | Path) -> Path:
    """`path` itself if it is a file, or `<path>/tokenizer.json` if it is a directory."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json or the directory holding it."""
    from tokenizers import Tokenizer

    file = tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception for any malformed file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{file}: not a valid tokenizer.json ({reason})") from None


def read_tokenizer_config(path: str | Path) -> dict[str, Any]:
    """tokenizer_config.json beside a tokenizer.json (or in its directory); {} when there is none."""
    file = tokenizer_file(path).with_name(CONFIG_FILE)
    if not file.is_file():
        return {}
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{file}: expected a JSON object")
    return loaded
