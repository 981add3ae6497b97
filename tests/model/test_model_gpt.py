"""The model: shapes, init, causality, padding, KV cache, GQA, tying, optimizer groups, config resolution."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model.gpt import GPT, GPTConfig, default_intermediate_size

FLAVOURS = ["gpt2", "llama"]


def tiny(flavour: str, **kw) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32, flavour=flavour)
    if flavour == "llama":
        args["n_kv_head"] = 2
    args.update(kw)
    return GPT(GPTConfig(**args)).eval()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_forward_shapes_and_initial_loss(flavour):
    model = tiny(flavour, vocab_size=512, n_embd=64)
    idx = torch.randint(0, 512, (3, 20))
    targets = torch.randint(0, 512, (3, 20))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 20, 512)
    assert abs(loss.item() - math.log(512)) < 0.1
    logits, loss = model(idx)
    assert loss is None
    hidden = model.forward_hidden(idx)
    assert hidden.shape == (3, 20, 64)


def test_ignore_index():
    model = tiny("gpt2")
    idx = torch.randint(0, 97, (2, 10))
    targets = idx.clone()
    targets[:, :5] = -100
    _, loss = model(idx, targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97), idx[:, 5:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_causality(flavour):
    model = tiny(flavour)
    idx = torch.randint(0, 97, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_left_padding_matches_unpadded(flavour):
    model = tiny(flavour)
    seq = torch.randint(0, 97, (1, 9))
    pad = 5
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), seq], dim=1)
    other = torch.randint(0, 97, (1, pad + 9))
    batch = torch.cat([padded, other])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    ref, _ = model(seq)
    logits, _ = model(batch, attention_mask=mask)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0, pad:], ref[0], atol=1e-5)
    ref_other, _ = model(other)
    assert torch.allclose(logits[1], ref_other[0], atol=1e-5)


def greedy_full(model: GPT, idx: torch.Tensor, mask: torch.Tensor | None, steps: int):
    tokens, all_logits = idx, []
    for _ in range(steps):
        logits, _ = model(tokens, attention_mask=mask)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        all_logits.append(logits[:, -1])
        tokens = torch.cat([tokens, nxt], 1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return tokens, torch.stack(all_logits, 1)


def greedy_cached(model: GPT, idx: torch.Tensor, mask: torch.Tensor | None, steps: int):
    cache = model.new_kv_cache(idx.size(0), idx.size(1) + steps)
    tokens, step_in, all_logits = idx, idx, []
    for _ in range(steps):
        logits, _ = model(step_in, attention_mask=mask, kv_cache=cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        all_logits.append(logits[:, -1])
        tokens = torch.cat([tokens, nxt], 1)
        step_in, mask = nxt, None
    assert cache.length == tokens.size(1) - 1
    return tokens, torch.stack(all_logits, 1)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kv_cache_matches_full_recompute(flavour):
    model = tiny(flavour)
    idx = torch.randint(0, 97, (1, 5))
    full, full_logits = greedy_full(model, idx, None, 30)
    cached, cached_logits = greedy_cached(model, idx, None, 30)
    assert torch.equal(full, cached)
    assert torch.allclose(full_logits, cached_logits, atol=1e-5)
    assert torch.equal(model.generate(idx, 30, temperature=0), full)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kv_cache_left_padded_batch(flavour):
    model = tiny(flavour)
    idx = torch.randint(1, 97, (2, 7))
    mask = torch.ones_like(idx)
    idx[0, :3], mask[0, :3] = 0, 0  # row 0: 4 real tokens, left-padded
    full, full_logits = greedy_full(model, idx, mask, 30)
    cached, cached_logits = greedy_cached(model, idx, mask, 30)
    assert torch.equal(full, cached)
    assert torch.allclose(full_logits, cached_logits, atol=1e-5)
    # and row 0 decodes exactly as it would alone, unpadded
    alone, _ = greedy_full(model, idx[:1, 3:], None, 30)
    assert torch.equal(cached[0, 3:], alone[0])
    assert torch.equal(model.generate(idx, 30, temperature=0, attention_mask=mask), full)


def test_kv_cache_multi_token_chunks():
    model = tiny("llama")
    idx = torch.randint(0, 97, (2, 12))
    ref, _ = model(idx)
    cache = model.new_kv_cache(2)
    parts = [model(chunk, kv_cache=cache)[0] for chunk in idx.split([5, 4, 3], dim=1)]
    assert torch.allclose(torch.cat(parts, 1), ref, atol=1e-5)
    with pytest.raises(ValueError):
        model(idx, kv_cache=model.new_kv_cache(2, max_len=8))


def test_generate_past_block_size_and_sampling():
    model = tiny("gpt2", block_size=16)
    idx = torch.randint(0, 97, (2, 4))
    out = model.generate(idx, 20, temperature=0.8, top_k=5)
    assert out.shape == (2, 24) and torch.equal(out[:, :4], idx)


def test_gqa_matches_repeated_heads():
    """n_kv_head < n_head equals a full multi-head model whose k/v heads are repeated."""
    gqa = tiny("llama", n_head=4, n_kv_head=2)
    mha = tiny("llama", n_head=4, n_kv_head=4)
    sd = gqa.state_dict()
    hd = 8
    for i in range(2):
        w = sd[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([32, 16, 16])
        rep = lambda t: t.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(32, 32)  # noqa: E731
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    idx = torch.randint(0, 97, (2, 10))
    assert gqa.num_params() < mha.num_params()
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tied_and_untied(flavour):
    tied, untied = tiny(flavour), tiny(flavour, tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() - tied.num_params() == 97 * 32
    assert tied.num_params() == len(torch.nn.utils.parameters_to_vector(tied.parameters()))
    # a state dict round trip keeps the tie
    copy = tiny(flavour, tie_embeddings=True)
    copy.load_state_dict(tied.state_dict())
    assert copy.lm_head.weight is copy.wte.weight


def test_init_std():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1000, n_layer=8, n_head=4, n_embd=256, block_size=128))
    target = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert abs(block.attn.out.weight.std().item() - target) < 0.1 * target
        assert abs(block.mlp.down.weight.std().item() - target) < 0.1 * target
        assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.002
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.ln_1.weight == 1)
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    assert abs(model.wpe.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("tie", [True, False])
def test_optimizer_groups(flavour, tie):
    model = tiny(flavour, tie_embeddings=tie, bias=True)
    decay, no_decay = model.configure_optimizer_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(p.dim() == 2 for p in decay["params"])
    assert "wte.weight" not in decayed and "wpe.weight" not in decayed
    assert not any("ln" in n or n.endswith("bias") for n in decayed)
    assert ("lm_head.weight" in decayed) == (not tie)
    assert "blocks.0.attn.qkv.weight" in decayed and "blocks.1.mlp.down.weight" in decayed
    torch.optim.AdamW(model.configure_optimizer_groups(0.1), lr=1e-3)  # accepted as is


def test_num_params_and_flops():
    model = tiny("gpt2")
    n_ne = model.num_params(non_embedding=True)
    assert model.num_params() - n_ne == 64 * 32  # the position table
    c = model.config
    assert model.flops_per_token() == 6 * n_ne + 12 * c.n_layer * c.n_embd * c.block_size
    assert model.flops_per_token(training=False) * 3 == model.flops_per_token()


def test_dropout_trains_and_evals():
    model = tiny("gpt2", dropout=0.5).train()
    idx = torch.randint(0, 97, (2, 10))
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.allclose(model(idx)[0], model(idx)[0])


def test_config_resolution_and_round_trip():
    g = GPTConfig(vocab_size=10, flavour="gpt2", n_embd=96)
    assert g.n_kv_head == 4 and g.bias is True and g.intermediate_size == 384
    ll = GPTConfig(vocab_size=10, flavour="llama", n_embd=4096, n_head=32)
    assert ll.bias is False and ll.intermediate_size == default_intermediate_size("llama", 4096) == 10944
    assert default_intermediate_size("llama", 384) == 1024
    assert GPTConfig.from_dict(ll.to_dict()) == ll
    with pytest.raises(ConfigError, match="unknown key 'n_layers'"):
        GPTConfig.from_dict({**ll.to_dict(), "n_layers": 3})
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(vocab_size=10, n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(vocab_size=10, n_head=4, n_kv_head=3)


def test_from_model_config():
    # no preset: every field of the section
    c = GPTConfig.from_model_config(ModelConfig(n_layer=3, flavour="llama"), vocab_size=50)
    assert (c.n_layer, c.flavour, c.vocab_size, c.bias, c.n_kv_head) == (3, "llama", 50, False, 4)
    # a preset, with only the keys that differ from ModelConfig's defaults taken over it
    c = GPTConfig.from_model_config(ModelConfig(preset="gpt2-124m", dropout=0.1), vocab_size=300)
    assert (c.n_layer, c.n_embd, c.block_size, c.dropout, c.vocab_size) == (12, 768, 1024, 0.1, 300)
    c = GPTConfig.from_model_config(ModelConfig(preset="llama-1b", block_size=512))
    assert (c.flavour, c.block_size, c.n_kv_head, c.vocab_size) == ("llama", 512, 8, 32000)
    # an explicit vocab wins, but may not be smaller than the tokenizer's
    assert GPTConfig.from_model_config(ModelConfig(vocab_size=128), vocab_size=100).vocab_size == 128
    with pytest.raises(ConfigError, match="below the tokenizer"):
        GPTConfig.from_model_config(ModelConfig(vocab_size=64), vocab_size=100)
    with pytest.raises(ConfigError, match="vocab_size"):
        GPTConfig.from_model_config(ModelConfig())
    with pytest.raises(ConfigError, match="unknown model preset 'gpt3'"):
        GPTConfig.from_model_config(ModelConfig(preset="gpt3"), vocab_size=10)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_meta_then_materialize(flavour):
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, flavour=flavour)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.lm_head.weight is model.wte.weight
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.wte.weight.std().item() - 0.02) < 0.003
    assert torch.isfinite(model(torch.randint(0, 97, (1, 8)))[0]).all()


def test_compiles_as_one_graph():
    model = tiny("llama", dropout=0.1).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    idx = torch.randint(0, 97, (2, 16))
    _, loss = compiled(idx, idx)
    loss.backward()
    assert model.wte.weight.grad is not None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_activation_checkpointing_same_loss_and_gradients(flavour):
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for recompute in (False, True):
        model = tiny(flavour, dropout=0.1).train()
        model.activation_checkpointing = recompute
        torch.manual_seed(5)  # the same dropout masks; checkpointing replays them in the recomputation
        _, loss = model(idx[:, :-1], targets=idx[:, 1:])
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert torch.equal(loss_a, loss_b)
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-6, atol=1e-7, msg=name)
