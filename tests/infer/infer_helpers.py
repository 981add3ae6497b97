"""Tiny models and a char-level tokenizer for the inference tests (shared by the test modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmforge.config import TokenizerConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.train import char_tokenizer, special_tokens

TEXT = "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer.\n"


@dataclass
class Tiny:
    model: GPT
    tokenizer: Any  # tokenizers.Tokenizer
    eos_id: int


def make_tokenizer() -> tuple[Any, TokenizerConfig]:
    """(a tokenizers.Tokenizer with one token per character of TEXT after the special tokens, its config)."""
    tc = TokenizerConfig(kind="char")
    return char_tokenizer(sorted(set(TEXT)), special_tokens(tc), tc.unk_token), tc


def make_model(flavour: str, vocab_size: int, block_size: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2 if flavour ==
                    "llama" else None, n_embd=32, flavour=flavour)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init: varied text and fewer near-tie logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()
