"""LoRA adapter directories: load_model applies one over its base, `lmforge merge` folds it into a plain
checkpoint, `lmforge export` merges it on the way, and an adapter of another base model is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from export_helpers import tiny_config, write_checkpoint

from lmforge.cli import main
from lmforge.infer.load import load_model
from lmforge.model.lora import AdapterError, BaseModelRef, LoraSpec, apply_lora, lora_layers, save_adapter

IDX = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(4))


def make_adapter(base: Path, out: Path) -> torch.Tensor:
    """An adapter with non-zero B over `base`; returns the adapted model's logits on IDX."""
    loaded = load_model(base)
    spec = LoraSpec(rank=4, alpha=8, targets=["attn.qkv", "attn.out", "mlp.*"])
    apply_lora(loaded.model, spec)
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(loaded.model).values():
            layer.lora_B.normal_(0, 0.05)
        logits, _ = loaded.model(IDX)
    save_adapter(loaded.model, out, spec, BaseModelRef.of(loaded.source, loaded.model.config.to_dict()))
    return logits


def logits_of(path: Path, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return load_model(path, **kwargs).model(IDX)[0]


@pytest.fixture
def base_and_adapter(tmp_path: Path, tokenizer_dir: Path) -> tuple[Path, Path, torch.Tensor]:
    base = write_checkpoint(tmp_path / "base" / "checkpoints", tiny_config("llama"), tokenizer_dir)
    adapter = tmp_path / "adapter"
    return base, adapter, make_adapter(base, adapter)


def test_adapter_loads_over_its_base_and_merges(tmp_path: Path, base_and_adapter):
    base, adapter, adapted = base_and_adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["rank"] == 4 and config["alpha"] == 8 and config["targets"] == ["attn.qkv", "attn.out", "mlp.*"]
    assert config["base_model"]["path"] == str(base.resolve()) and len(config["base_model"]["sha256"]) == 64
    assert config["base_model"]["model_config"]["flavour"] == "llama"

    loaded = load_model(adapter)
    assert loaded.kind == "lora" and loaded.tokenizer is not None and loaded.eos_id == 1
    assert (logits_of(adapter) - adapted).abs().max() < 1e-6

    merged = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(merged)]) == 0
    names = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "model_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "checksums.json"} <= names  # fmt: skip
    assert not names & {"adapter.safetensors", "adapter_config.json", "train_state.pt"}
    plain = load_model(merged)
    assert plain.kind == "lmforge" and not lora_layers(plain.model)
    with torch.no_grad():
        assert (plain.model(IDX)[0] - adapted).abs().max() < 1e-5


def test_export_of_an_adapter_merges_it(tmp_path: Path, base_and_adapter):
    transformers = pytest.importorskip("transformers")
    _, adapter, adapted = base_and_adapter
    out = tmp_path / "hf"
    assert main(["export", str(adapter), "--format", "hf", "--out", str(out)]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (hf_model(IDX).logits - adapted).abs().max() < 1e-4


def test_adapter_of_another_base_is_refused(tmp_path: Path, tokenizer_dir: Path, base_and_adapter, capsys):
    base, adapter, adapted = base_and_adapter
    same_shape = write_checkpoint(tmp_path / "other" / "checkpoints", tiny_config("llama"), tokenizer_dir, seed=1)
    wider = write_checkpoint(tmp_path / "wide" / "checkpoints", tiny_config("llama", n_embd=128), tokenizer_dir)
    for other in (same_shape, wider):
        with pytest.raises(AdapterError, match="trained on another base model"):
            load_model(adapter, base=other)
        assert main(["merge", str(adapter), "--base", str(other), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "trained on another base model" in err, err
    assert not (tmp_path / "m").exists()

    # the recorded base gone: a clear line; the base given explicitly: fine
    moved = tmp_path / "moved"
    shutil.move(base.parent.parent, moved)
    assert main(["merge", str(adapter), "--out", str(tmp_path / "m")]) == 2
    assert "not found" in capsys.readouterr().err
    explicit = moved / "checkpoints" / base.name
    assert (logits_of(adapter, base=explicit) - adapted).abs().max() < 1e-6


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, tokenizer_dir: Path, capsys):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints", tiny_config("gpt2"), tokenizer_dir)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "no such model"),
        (["export", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "o")], "unknown export format 'tflite'"),
        (["export", str(ckpt), "--out", str(taken)], "exists and is not empty"),
        (["export", str(ckpt), "--out", str(ckpt.parent)], "holds the model being read"),
        (["merge", str(ckpt), "--out", str(tmp_path / "o")], "not a LoRA adapter directory"),
        (["merge", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "no such adapter"),
        (["convert", str(ckpt), "--out", str(tmp_path / "o")], "not a Hugging Face model directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert (taken / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()
