"""Our flavours give the logits of transformers' GPT2LMHeadModel and LlamaForCausalLM with the same weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.model.gpt import GPT  # noqa: E402
from lmforge.model.hf_convert import config_from_hf, from_hf_state_dict, to_hf_state_dict  # noqa: E402


def randomize(model: torch.nn.Module) -> None:
    """Random weights everywhere (norms and biases too), so every mapped tensor matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)


def check_same(hf_model, flavour: str) -> GPT:
    hf_model.eval()
    randomize(hf_model)
    cfg = config_from_hf(hf_model.config)
    ours = GPT(cfg).eval()
    ours.load_state_dict(from_hf_state_dict(flavour, hf_model.state_dict(), cfg))
    idx = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits, _ = ours(idx)
    assert torch.allclose(logits, expected, atol=1e-4), (logits - expected).abs().max()
    # and back: our weights load into the HF model unchanged
    back = to_hf_state_dict(flavour, ours.state_dict(), cfg)
    hf_sd = hf_model.state_dict()
    assert set(back) == set(hf_sd)
    for key, value in back.items():
        assert torch.equal(value, hf_sd[key]), key
    return ours


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_matches_transformers(tie):
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, tie_word_embeddings=tie
    )
    ours = check_same(transformers.GPT2LMHeadModel(config), "gpt2")
    assert ours.config.flavour == "gpt2" and ours.config.block_size == 64


@pytest.mark.parametrize("tie", [True, False])
def test_llama_matches_transformers(tie):
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )  # fmt: skip
    hf_model = transformers.LlamaForCausalLM(config)
    ours = check_same(hf_model, "llama")
    assert ours.config.n_kv_head == 2 and ours.config.rope_theta == 500.0

    # a left-padded batch: HF given explicit positions, ours deriving them from the mask
    idx = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(idx)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf_model(idx, attention_mask=mask, position_ids=positions).logits
        logits, _ = ours(idx, attention_mask=mask)
    assert torch.allclose(logits[0, 4:], expected[0, 4:], atol=1e-4)
    assert torch.allclose(logits[1], expected[1], atol=1e-4)
