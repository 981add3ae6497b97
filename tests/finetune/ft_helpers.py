"""A tiny base model (char-level tokenizer with the chat tokens, chat template in tokenizer_config.json) and
small SFT / classification data sets for the fine-tuning tests."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch

from lmforge.config import TokenizerConfig
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.train import char_tokenizer, save_tokenizer, special_tokens
from lmforge.train.checkpoint import save_checkpoint

CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n"))

FAST = [
    "train.batch_size=8", "train.log_every=5", "train.eval_every=10", "train.save_every=10",
    "train.schedule.warmup_steps=2", "train.threads=1", "train.sample_tokens=8", "train.device=cpu",
]  # fmt: skip


def make_base(run: Path, flavour: str = "gpt2", block_size: int = 64, seed: int = 0) -> Path:
    """runs/<base>/: the tokenizer files and checkpoints/step-0000001, as a pretraining run leaves them."""
    run.mkdir(parents=True, exist_ok=True)
    tc = TokenizerConfig(kind="char")
    tokenizer = char_tokenizer(CHARS, special_tokens(tc), tc.unk_token)
    save_tokenizer(tokenizer, run, tc, model_max_length=block_size)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                    flavour=flavour)  # fmt: skip
    model = GPT(cfg)
    eos = tokenizer.token_to_id(tc.eos_token)
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), cfg.to_dict(), {"step": 1},
                    {"step": 1, "eos_id": eos}, tokenizer_file=run / "tokenizer.json")  # fmt: skip
    return run


def alpaca_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """'Repeat: xyz' -> 'xyz' (a task a tiny model learns in a few dozen steps)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice("abcd") for _ in range(3))
        out.append({"instruction": "Repeat", "input": word, "output": word})
    return out


def sentiment_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Planted signal: a 'good' text contains 'x', a 'bad' one 'z', among random filler letters."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["bad", "good"])
        filler = [rng.choice("abcdefgh") for _ in range(rng.randint(4, 12))]
        filler.insert(rng.randint(0, len(filler)), "x" if label == "good" else "z")
        out.append({"text": "".join(filler), "label": label})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
