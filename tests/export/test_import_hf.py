"""Hugging Face directories of Llama, Mistral, Qwen2 and GPT-2 causal LMs load as our GPT with the same
logits; `lmforge convert` turns one into an lmforge checkpoint; other architectures are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import save_hf

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.infer.load import load_model

transformers = pytest.importorskip("transformers")

LLAMA_SHAPE = {
    "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
}  # fmt: skip


def hf_checkpoint(kind: str, out: Path, **extra) -> tuple[Path, torch.nn.Module]:
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=128, **extra)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config_cls, model_cls = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[kind]
        model = model_cls(config_cls(**LLAMA_SHAPE, **extra))
    return save_hf(model, out), model.eval()


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("llama", {"tie_word_embeddings": True}),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {}),
        ("gpt2", {}),
    ],
)
def test_hf_import_gives_the_same_logits(tmp_path: Path, kind, extra):
    path, hf_model = hf_checkpoint(kind, tmp_path / kind, **extra)
    loaded = load_model(path)
    assert loaded.kind == "hf"
    if kind == "qwen2":
        assert loaded.model.config.qkv_bias and not loaded.model.config.bias
    idx = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits, _ = loaded.model(idx)
    assert (logits - expected).abs().max() < 1e-4


def test_convert_writes_a_checkpoint(tmp_path: Path, capsys):
    path, hf_model = hf_checkpoint("qwen2", tmp_path / "qwen2", tie_word_embeddings=True)
    out = tmp_path / "converted"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    assert json.loads((out / "model_config.json").read_text())["qkv_bias"] is True
    loaded = load_model(out)
    assert loaded.kind == "lmforge"
    idx = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        logits, _ = loaded.model(idx)
        assert (logits - hf_model(idx).logits).abs().max() < 1e-4


def test_mistral_sliding_window_shorter_than_context_is_refused(tmp_path: Path):
    path, _ = hf_checkpoint("mistral", tmp_path / "mistral", sliding_window=16)
    with pytest.raises(LmforgeError, match="sliding_window=16 < max_position_embeddings=128"):
        load_model(path)
    # a window as long as the context is plain causal attention
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "sliding_window": 128}))
    assert load_model(path).model.config.n_kv_head == 2


def test_unsupported_architectures_are_one_line_and_exit_2(tmp_path: Path, capsys):
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(str(bert))
    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 64}))
    for path, kind in ((bert, "bert"), (mamba, "mamba")):
        for verb in (["convert", str(path), "--out", str(tmp_path / "out")],
                     ["export", str(path), "--format", "hf", "--out", str(tmp_path / "out")]):  # fmt: skip
            assert main(verb) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"model_type '{kind}'" in err, err
    assert not (tmp_path / "out").exists()
