"""A tiny model of each flavour with a char-level tokenizer, saved as a real run directory for the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_helpers import Tiny, make_model, make_tokenizer

from lmforge.tokenizer.train import save_tokenizer
from lmforge.train.checkpoint import save_checkpoint


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    tokenizer, _ = make_tokenizer()
    model = make_model(request.param, tokenizer.get_vocab_size())
    return Tiny(model, tokenizer, tokenizer.token_to_id("<|endoftext|>"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/tiny/: checkpoints/step-0000001 (weights + tokenizer.json) and the tokenizer's own files (its
    tokenizer_config.json holds the chat template), as a pretraining run on encoded shards leaves them."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    tokenizer, tc = make_tokenizer()
    model = make_model("gpt2", tokenizer.get_vocab_size())
    save_tokenizer(tokenizer, run, tc, model_max_length=model.config.block_size)
    eos = tokenizer.token_to_id(tc.eos_token)
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), model.config.to_dict(), {"step": 1},
                    {"step": 1, "eos_id": eos}, tokenizer_file=run / "tokenizer.json")  # fmt: skip
    return run


@pytest.fixture(scope="session")
def plain_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with a tokenizer.json only: no tokenizer_config.json, so no chat template."""
    run = tmp_path_factory.mktemp("runs") / "plain"
    tokenizer, _ = make_tokenizer()
    model = make_model("llama", tokenizer.get_vocab_size())
    tok_file = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(tok_file))
    return save_checkpoint(run / "checkpoints", 3, model.state_dict(), model.config.to_dict(), {"step": 3},
                           {"step": 3}, tokenizer_file=tok_file)  # fmt: skip


