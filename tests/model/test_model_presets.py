"""Presets, parameter counts on the meta device, and `lmforge model info`."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model.presets import PRESETS, get_preset, meta_model


def test_gpt2_124m_parameter_count():
    model = meta_model(ModelConfig(preset="gpt2-124m", vocab_size=50257))
    assert model.wte.weight.is_meta
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize(
    "name, low, high",
    [("char-tiny", 0.7e6, 0.9e6), ("char-small", 9e6, 12e6), ("small", 8e6, 15e6),
     ("gpt2-350m", 0.34e9, 0.37e9), ("llama-120m", 0.1e9, 0.14e9), ("llama-1b", 0.9e9, 1.3e9)],
)  # fmt: skip
def test_preset_sizes(name, low, high):
    assert low <= meta_model(ModelConfig(preset=name)).num_params() <= high


def test_every_preset_builds():
    for name in PRESETS:
        model = meta_model(ModelConfig(preset=name))
        assert model.config.vocab_size == PRESETS[name]["default_vocab_size"]


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match=r"unknown model preset 'gpt2-125m' \(did you mean 'gpt2-124m'\?\)"):
        get_preset("gpt2-125m")


def test_cli_model_info(capsys):
    assert main(["model", "info", "char-tiny"]) == 0
    out = capsys.readouterr().out
    assert "char-tiny" in out and "gpt2: 4 layers, 4 heads, 128 dim" in out
    assert "parameters" in out and "FLOPs/token" in out and "KV cache" in out and "bf16" in out


def test_cli_model_info_overrides(capsys):
    assert main(["model", "info", "llama-1b", "model.n_layer=2", "train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "llama: 2 layers, 32 heads (8 kv)" in out and "batch 2 x 2048" in out


def test_cli_model_info_list(capsys):
    assert main(["model", "info", "list"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "124.4M" in out


def test_cli_unknown_preset(capsys):
    assert main(["model", "info", "llama-2b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: unknown model preset 'llama-2b'")
