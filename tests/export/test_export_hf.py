"""`lmforge export --format hf`: transformers loads the directory with no custom code and gives our logits,
our greedy generation and our tokenization; `--format safetensors` gives a clean checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import tiny_config, write_checkpoint
from safetensors import safe_open

from lmforge.cli import main
from lmforge.infer.load import load_model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("flavour", "overrides", "arch"),
    [
        ("gpt2", {}, "GPT2LMHeadModel"),  # tied head
        ("llama", {"tie_embeddings": False}, "LlamaForCausalLM"),  # grouped-query attention, own head
        ("llama", {"qkv_bias": True}, "Qwen2ForCausalLM"),  # biases on q/k/v only
    ],
)
def test_hf_export_loads_in_transformers(tmp_path: Path, tokenizer_dir: Path, flavour, overrides, arch):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints", tiny_config(flavour, **overrides), tokenizer_dir)
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), "--format", "hf", "--out", str(out)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch]
    assert config["vocab_size"] == 300 and config["eos_token_id"] == 1 and config["bos_token_id"] == 0
    if flavour == "gpt2":
        assert config["activation_function"] == "gelu_new" and config["n_positions"] == 64
    else:
        assert config["num_key_value_heads"] == 2 and config["intermediate_size"] == 96
        assert config["max_position_embeddings"] == 64 and config["rms_norm_eps"] == 1e-5
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert ("lm_head.weight" in stored) == (not config["tie_word_embeddings"])
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "README.md", "manifest.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert arch in (out / "README.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert not list(tmp_path.glob(".hf.tmp-*"))

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_model(ckpt)
    assert type(hf_model).__name__ == arch
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = ours.model(idx)
        got = hf_model(idx).logits
    assert (got - expected).abs().max() < 1e-4

    prompt = idx[:1, :5]
    ours_greedy = ours.model.generate(prompt, max_new_tokens=12, temperature=0)
    hf_greedy = hf_model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                  attention_mask=torch.ones_like(prompt))  # fmt: skip
    assert hf_greedy.tolist() == ours_greedy.tolist()

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "First Citizen: hear me speak."
    assert hf_tok(text)["input_ids"] == ours.tokenizer.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>"


def test_safetensors_export_is_a_clean_checkpoint(tmp_path: Path, tokenizer_dir: Path):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints", tiny_config("llama"), tokenizer_dir)
    out = tmp_path / "clean"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(out), "export.dtype=bf16"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "checksums.json", "manifest.json"} <= names  # fmt: skip
    assert "train_state.pt" not in names
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()

    exported, original = load_model(out), load_model(ckpt)
    assert exported.eos_id == original.eos_id == 1
    idx = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        a, _ = exported.model(idx)
        b, _ = original.model.to(torch.bfloat16).float()(idx)
    assert torch.allclose(a, b, atol=1e-4)

    # exporting again over an earlier export is fine; over some other directory it is not
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(out)]) == 0


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_config_written_without_transformers_reads_the_same(tmp_path: Path, flavour):
    """Without transformers installed, export writes config_to_hf's dict as it is: transformers must read
    it as the same model as the config it writes itself."""
    from lmforge.model.hf_convert import config_from_hf, config_to_hf

    cfg = tiny_config(flavour)
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(cfg, 0, 1, 2)))
    read = transformers.AutoConfig.from_pretrained(str(tmp_path))
    assert config_from_hf(read) == cfg and read.eos_token_id == 1
