"""Tiny Hugging Face models saved in a temporary directory (random weights, a byte-level BPE trained here),
so the evaluation runs on real files end to end and can be checked against transformers itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

EOS = "<|endoftext|>"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A man in a blue shirt is standing on a ladder cleaning windows.",
    "Two young children are playing with a ball in the green park.",
    "She said that the weather would be fine for the picnic tomorrow.",
    "The old castle on the hill was built in the twelfth century by monks.",
    "Scientists measured the temperature of the lake every morning for a year.",
    "He opened the door slowly and looked into the dark and quiet room.",
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Zwei Hunde spielen im Schnee vor einem kleinen Haus.",
    "我们明天去公园散步。今天天气很好。",
    "The river flows through the valley and reaches the sea after many miles.",
    "Children learn languages quickly when they hear them every day at home.",
]


def corpus_text(repeat: int = 4) -> str:
    lines = []
    for r in range(repeat):
        for i, s in enumerate(SENTENCES):
            lines.append(SENTENCES[(i * 5 + r) % len(SENTENCES)] + " " + s)
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import ByteLevelBPETokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        [corpus_text()] * 2, vocab_size=400, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tok.save(str(out / "tokenizer.json"))
    config = {"eos_token": EOS, "bos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _save(model: torch.nn.Module, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tokenizer_dir / name).read_bytes())
    return out


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_positions=48,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        eos_token_id=0,
        bos_token_id=0,
    )
    return _save(GPT2LMHeadModel(cfg).eval(), tokenizer_dir, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=48,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=0,
        bos_token_id=0,
    )
    return _save(LlamaForCausalLM(cfg).eval(), tokenizer_dir, tmp_path_factory.mktemp("llama"))
