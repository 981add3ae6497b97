"""Hugging Face directories: our greedy decoding of a GPT2LMHeadModel / LlamaForCausalLM equals
transformers' own `generate(do_sample=False)`, token for token, for a left-padded batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from infer_helpers import make_tokenizer

from lmforge.infer.generate import SamplingParams, generate
from lmforge.infer.load import load_model

transformers = pytest.importorskip("transformers")

PROMPTS = ["To be, or", "Whether 'tis nobler in the mind", "t"]
NEW = 16


def hf_model(flavour: str, vocab: int, eos: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if flavour == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=eos)  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=eos)  # fmt: skip
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init: fewer near-tie logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_greedy_equals_transformers_generate(flavour: str, tmp_path: Path) -> None:
    tokenizer, tc = make_tokenizer()
    eos = tokenizer.token_to_id(tc.eos_token)
    model = hf_model(flavour, tokenizer.get_vocab_size(), eos)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == flavour

    loaded = load_model(tmp_path)
    assert loaded.kind == "hf" and loaded.eos_id == eos
    ours = generate(loaded.model, loaded.tokenizer, PROMPTS, SamplingParams(max_new_tokens=NEW, temperature=0),
                    eos_id=loaded.eos_id)  # fmt: skip

    encoded = [tokenizer.encode(p).ids for p in PROMPTS]
    width = max(map(len, encoded))
    pad = 2
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=NEW, pad_token_id=pad, eos_token_id=eos)  # fmt: skip
    assert sum(len(c.token_ids) for c in ours) >= 10  # a real comparison, not three empty rows
    for row, completion in zip(out[:, width:].tolist(), ours):
        theirs = row[: row.index(eos)] if eos in row else row
        assert completion.token_ids == theirs
        assert completion.finish_reason == ("stop" if eos in row else "length")
