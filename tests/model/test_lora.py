"""LoRA layers: matching by pattern, a zero start, only adapters trainable, merging gives the same logits;
`freeze` for full fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.model.lora import (
    LoRALinear,
    LoraSpec,
    apply_lora,
    count_parameters,
    freeze,
    lora_layers,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
)


def tiny(flavour: str = "llama", **overrides) -> GPT:
    torch.manual_seed(0)
    shape = {"vocab_size": 97, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}
    if flavour == "llama":
        shape.update(n_kv_head=2, intermediate_size=96)
    return GPT(GPTConfig(flavour=flavour, **{**shape, **overrides})).eval()


def give_b_values(model: nn.Module) -> None:
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.05)


IDX = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))


def test_patterns_pick_layers_and_adapters_start_at_zero():
    model = tiny()
    before, _ = model(IDX)
    apply_lora(model, LoraSpec(rank=4, alpha=8, targets=["attn.qkv", "mlp.*"]))
    names = sorted(lora_layers(model))
    assert names == sorted(f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "mlp.gate", "mlp.up", "mlp.down"))
    layer = model.get_submodule("blocks.0.attn.qkv")
    assert isinstance(layer, LoRALinear) and isinstance(layer, nn.Linear) and layer.scale == 2.0
    assert layer.lora_A.shape == (4, 64) and layer.lora_A.abs().sum() > 0 and not layer.lora_B.any()
    assert "blocks.0.attn.qkv.weight" in model.state_dict()  # base names unchanged
    after, _ = model(IDX)
    assert torch.equal(before, after)
    with pytest.raises(ConfigError, match=r"'attn\.nope' matches no Linear layer"):
        apply_lora(tiny(), LoraSpec(targets=["attn.nope"]))


def test_only_lora_parameters_train_and_they_are_few():
    model = tiny(n_embd=128, intermediate_size=256)
    apply_lora(model, LoraSpec(rank=2, alpha=4, targets=["attn.qkv", "attn.out"]))
    mark_only_lora_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and len(trainable) == 8
    n_trainable, total = count_parameters(model)
    assert n_trainable / total < 0.02
    model.train()
    _, loss = model(IDX, targets=IDX)
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_merge_gives_the_same_logits(flavour):
    model = tiny(flavour)
    base_keys = set(model.state_dict())
    apply_lora(model, LoraSpec(rank=4, alpha=16, dropout=0.1, targets=["attn.qkv", "attn.out", "mlp.*"]))
    give_b_values(model)
    with torch.no_grad():
        adapted, _ = model(IDX)
        merge_lora(model)
        merged, _ = model(IDX)
    assert not lora_layers(model) and set(model.state_dict()) == base_keys
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith((".qkv", ".out", ".up", ".down")))
    assert (merged - adapted).abs().max() < 1e-5
    assert (adapted - tiny(flavour)(IDX)[0]).abs().max() > 1e-3  # the adapter did change the model


def test_merging_a_tied_head_unties_it():
    model = tiny("gpt2")
    embedding = model.wte.weight.detach().clone()
    apply_lora(model, LoraSpec(rank=2, targets=["lm_head"]))
    give_b_values(model)
    with torch.no_grad():
        adapted, _ = model(IDX)
        merge_lora(model)
        merged, _ = model(IDX)
    assert (merged - adapted).abs().max() < 1e-5
    assert not model.config.tie_embeddings and model.lm_head.weight is not model.wte.weight
    assert torch.equal(model.wte.weight, embedding)


def test_freeze_chosen_layers():
    model = tiny()
    frozen = freeze(model, ["wte", "blocks.0.*"])
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("wte", "blocks.0."))), name
    assert frozen == model.wte.weight.numel() + sum(p.numel() for p in model.blocks[0].parameters())
    with pytest.raises(ConfigError, match=r"'blocks\.9\.\*' matches no parameter"):
        freeze(model, ["blocks.9.*"])


def test_spec_from_config_section():
    from lmforge.config import load_config

    cfg = load_config(overrides=["lora.rank=4", "lora.alpha=8", "lora.targets=[mlp.*]"])
    spec = LoraSpec.from_config(cfg.lora)
    assert (spec.rank, spec.scale, spec.targets) == (4, 2.0, ["mlp.*"])
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        LoraSpec(rank=0)
