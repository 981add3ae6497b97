"""`lmforge export --format onnx`: real torch.onnx (dynamo) exports of tiny models, run by real onnxruntime and
compared with PyTorch and transformers; the onnxruntime-only runner (`OnnxLM`) and `lmforge generate` over an
export; int8 quantization.

Exports are the slow part (torch.export traces the model), so two are made per session and shared: a
transformers GPT-2 directory (gpt2 flavour, Hugging Face source, int8 copy) and a LoRA adapter over a Llama
checkpoint (RoPE, grouped-query attention, merged adapter)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import save_hf, tiny_config, write_checkpoint

from lmforge.cli import main
from lmforge.export.onnx import quantize_onnx
from lmforge.export.onnx_runner import OnnxLM, is_onnx_model, sample
from lmforge.infer.generate import SamplingParams, generate
from lmforge.infer.load import load_model
from lmforge.model.lora import BaseModelRef, LoraSpec, apply_lora, lora_layers, save_adapter

transformers = pytest.importorskip("transformers")

PROMPTS = ["First Citizen:", "Speak, speak. You are"]


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A transformers GPT-2 directory with random weights and the test tokenizer (eos id 1)."""
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64,
                                     bos_token_id=0, eos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    save_hf(transformers.GPT2LMHeadModel(config), out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory: pytest.TempPathFactory, hf_gpt2: Path) -> Path:
    out = tmp_path_factory.mktemp("exports") / "gpt2-onnx"
    assert main(["export", str(hf_gpt2), "--format", "onnx", "--out", str(out), "export.onnx_int8=true"]) == 0
    return out


@pytest.fixture(scope="module")
def lora_llama(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A LoRA adapter (non-zero B on attention and MLP) over a random Llama checkpoint."""
    root = tmp_path_factory.mktemp("lora")
    base = write_checkpoint(root / "base" / "checkpoints", tiny_config("llama"), tokenizer_dir, seed=3)
    loaded = load_model(base)
    spec = LoraSpec(rank=4, alpha=8, targets=["attn.qkv", "attn.out", "mlp.*"])
    apply_lora(loaded.model, spec)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(loaded.model).values():
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=gen))
    save_adapter(loaded.model, root / "adapter", spec, BaseModelRef.of(loaded.source, loaded.model.config.to_dict()))
    return root / "adapter"


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory: pytest.TempPathFactory, lora_llama: Path) -> Path:
    out = tmp_path_factory.mktemp("exports") / "llama-onnx"
    assert main(["export", str(lora_llama), "--format", "onnx", "--out", str(out)]) == 0
    return out


def torch_greedy(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list:
    loaded = load_model(model_dir)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    return generate(loaded.model, loaded.tokenizer, prompts, params, eos_id=loaded.eos_id)


# ---------------------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------------------


def test_export_writes_checked_graphs(gpt2_export: Path):
    names = {p.name for p in gpt2_export.iterdir()}
    assert {"model.onnx", "model_with_past.onnx", "model.onnx.data", "model.int8.onnx", "model_with_past.int8.onnx",
            "model.int8.onnx.data", "tokenizer.json", "tokenizer_config.json", "onnx_report.json", "README.md",
            "manifest.json", "config.yaml"} <= names  # fmt: skip
    assert not list(gpt2_export.parent.glob(".gpt2-onnx.tmp-*"))
    manifest = json.loads((gpt2_export / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["export"]["format"] == "onnx"
    assert {o["path"] for o in manifest["outputs"]} >= {"model.onnx", "model_with_past.onnx", "README.md"}

    report = json.loads((gpt2_export / "onnx_report.json").read_text())
    check = report["check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 == check["atol"]
    shapes = {(c["graph"], c["batch"], c["past"], c["seq"]) for c in check["cases"]}
    assert len({s[1:] for s in shapes if s[0] == "model.onnx"}) == 2, "two shapes for the plain graph"
    assert any(c["past"] > 0 for c in check["cases"]), "a continuation from the cache is checked"
    assert report["int8"]["bytes"] < 0.6 * report["int8"]["fp32_bytes"]
    assert 0 <= report["int8"]["top1_agreement_vs_fp32"] <= 1

    plain = report["graphs"]["model.onnx"]
    assert list(plain["inputs"]) == ["input_ids", "attention_mask"] and list(plain["outputs"]) == ["logits"]
    assert plain["inputs"]["input_ids"]["shape"] == ["batch", "seq"]  # dynamic batch and sequence axes
    past = report["graphs"]["model_with_past.onnx"]
    assert [n for n in past["inputs"] if n.startswith("past_")] == ["past_key.0", "past_value.0", "past_key.1",
                                                                    "past_value.1"]  # fmt: skip
    assert past["outputs"]["present_key.1"]["shape"] == ["batch", 4, "past + seq", 16]

    card = (gpt2_export / "README.md").read_text()
    assert "library_name: onnx" in card and "## ONNX" in card and "model.int8.onnx" in card
    assert f"{check['max_abs_diff']:.4g}" in card


def test_onnxruntime_matches_transformers(gpt2_export: Path, hf_gpt2: Path):
    """Our own onnxruntime session against transformers' model: independent of the export's check."""
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_gpt2)).eval()
    session = ort.InferenceSession(str(gpt2_export / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (4, 33)):
        ids = np.random.default_rng(seq).integers(0, 300, (batch, seq))
        got = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        with torch.no_grad():
            expected = hf_model(torch.from_numpy(ids)).logits.numpy()
        assert np.abs(got - expected).max() < 1e-4


def test_kv_graph_continues_a_left_padded_batch(llama_export: Path, lora_llama: Path):
    """Prefill a left-padded batch through model_with_past.onnx, then one more token: as PyTorch's forward
    with the same padding mask over the whole sequence (the adapter merged)."""
    session = ort.InferenceSession(str(llama_export / "model_with_past.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(7).integers(0, 300, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    empty = {i.name: np.zeros((2, 2, 0, 16), np.float32) for i in session.get_inputs()[2:]}
    _, *presents = session.run(None, {"input_ids": ids[:, :11], "attention_mask": mask[:, :11], **empty})
    caches = dict(zip([i.name for i in session.get_inputs()[2:]], presents))
    last = session.run(["logits"], {"input_ids": ids[:, 11:], "attention_mask": mask, **caches})[0]
    model = load_model(lora_llama).model
    with torch.no_grad():
        expected, _ = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    assert presents[0].shape == (2, 2, 11, 16)
    assert np.abs(last[:, 0] - expected[:, -1].numpy()).max() < 1e-4


def test_lora_llama_export(llama_export: Path, lora_llama: Path):
    report = json.loads((llama_export / "onnx_report.json").read_text())
    assert report["check"]["passed"] and report["check"]["max_abs_diff"] <= 1e-4
    assert "int8" not in report and not (llama_export / "model.int8.onnx").exists()
    meta = {p.key: p.value for p in onnx.load(str(llama_export / "model.onnx"), load_external_data=False).metadata_props}
    assert meta["lmforge.flavour"] == "llama" and meta["lmforge.with_past"] == "model_with_past.onnx"
    card = (llama_export / "README.md").read_text()
    assert "LoRA rank 4 merged" in card and "base model" in card  # the lineage goes through the base

    lm = OnnxLM(llama_export)
    ids = np.random.default_rng(1).integers(0, 300, (3, 20))
    with torch.no_grad():
        expected, _ = load_model(lora_llama).model(torch.from_numpy(ids))
    assert np.abs(lm.logits(ids) - expected.numpy()).max() < 1e-4


# ---------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_runner_greedy_equals_pytorch(which: str, gpt2_export: Path, hf_gpt2: Path, llama_export: Path,
                                      lora_llama: Path):  # fmt: skip
    export, source = (gpt2_export, hf_gpt2) if which == "gpt2" else (llama_export, lora_llama)
    lm = OnnxLM(export)
    assert lm.block_size == 64 and lm.eos_id == 1 and lm.with_past_path == export / "model_with_past.onnx"
    expected = torch_greedy(source, PROMPTS, 30)
    if which == "llama":  # (the random GPT-2 favours special tokens, which decode to no text)
        assert any(want.text for want in expected), "some text is compared, not only token ids"
    for prompt, want in zip(PROMPTS, expected):
        got = lm.complete(prompt, 30, temperature=0)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert lm.generate(prompt, 30, temperature=0) == want.text
    # A prompt that fills the context: cut from the left as PyTorch cuts it, stopped at block_size.
    long_prompt = "Before we proceed any further, hear me speak. " * 6
    want = torch_greedy(source, [long_prompt], 40)[0]
    got = lm.complete(long_prompt, 40, temperature=0)
    assert got.prompt_ids == want.prompt_ids and got.token_ids == want.token_ids
    assert len(got.prompt_ids) + len(got.token_ids) <= lm.block_size + 1


def test_runner_without_kv_graph_and_int8(gpt2_export: Path, tmp_path: Path):
    """A lone model.onnx (no KV sibling) decodes by recomputing: the same greedy tokens. The int8 file
    picks its own int8 KV sibling."""
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gpt2_export / name, lone / name)
    cached, recomputed = OnnxLM(gpt2_export), OnnxLM(lone / "model.onnx")
    assert recomputed.with_past_path is None and recomputed.past_session is None
    assert cached.complete(PROMPTS[0], 25, 0).token_ids == recomputed.complete(PROMPTS[0], 25, 0).token_ids

    int8 = OnnxLM(gpt2_export / "model.int8.onnx")
    assert int8.with_past_path == gpt2_export / "model_with_past.int8.onnx"
    ids = np.random.default_rng(3).integers(0, 300, (2, 9))
    diff = np.abs(int8.logits(ids) - cached.logits(ids)).max()
    assert 0 < diff < 10  # quantized: close, not equal
    assert len(int8.complete(PROMPTS[0], 10, 0).token_ids) >= 1


def test_runner_sampling(gpt2_export: Path):
    lm = OnnxLM(gpt2_export)
    greedy = lm.complete(PROMPTS[1], 20, temperature=0).token_ids
    assert lm.complete(PROMPTS[1], 20, temperature=1.0, top_k=1, seed=5).token_ids == greedy
    assert lm.complete(PROMPTS[1], 20, temperature=0.7, top_p=1e-6, seed=5).token_ids == greedy
    a = lm.generate(PROMPTS[1], 20, temperature=1.5, top_k=50, top_p=0.95, seed=11)
    assert a == lm.generate(PROMPTS[1], 20, temperature=1.5, top_k=50, top_p=0.95, seed=11)
    draws = {tuple(lm.complete(PROMPTS[1], 20, temperature=1.5, seed=s).token_ids) for s in range(4)}
    assert len(draws) > 1, "different seeds sample different continuations"
    streamed = "".join(lm.stream(PROMPTS[1], 20, temperature=1.5, top_k=50, top_p=0.95, seed=11))
    assert streamed == a


def test_sample_filters():
    rng = np.random.default_rng(0)
    logits = np.array([2.0, 1.0, 0.5, -1.0, 3.0])
    assert sample(logits, 0, None, None, rng) == 4
    assert {sample(logits, 1.0, 2, None, rng) for _ in range(200)} == {0, 4}
    # top_p: the most likely tokens holding 0.8 of the mass (e^3 and e^2 of the total hold ~0.86)
    probs = np.exp(logits) / np.exp(logits).sum()
    assert probs[4] < 0.8 < probs[4] + probs[0]
    assert {sample(logits, 1.0, None, 0.8, rng) for _ in range(200)} == {0, 4}


def test_stop_strings_as_pytorch(llama_export: Path, lora_llama: Path):
    """A stop string taken from inside the greedy text (at its first occurrence, whole characters): both
    engines cut the text just before it."""
    lm = OnnxLM(llama_export)
    full = lm.generate(PROMPTS[0], 30, temperature=0)
    starts = [i for i in range(1, len(full) - 1)
              if "\ufffd" not in full[i : i + 2] and full.find(full[i : i + 2]) == i]  # fmt: skip
    assert starts, f"no usable stop string in {full!r}"
    stop = full[starts[len(starts) // 2] :][:2]
    loaded = load_model(lora_llama)
    params = SamplingParams(max_new_tokens=30, temperature=0, stop=[stop])
    expected = generate(loaded.model, loaded.tokenizer, [PROMPTS[0]], params, eos_id=loaded.eos_id)[0]
    got = lm.complete(PROMPTS[0], 30, temperature=0, stop=[stop])
    assert got.text == expected.text == full[: full.index(stop)] and got.finish_reason == "stop"
    assert "".join(lm.stream(PROMPTS[0], 30, temperature=0, stop=[stop])) == got.text


def test_eos_stops_generation(gpt2_export: Path, hf_gpt2: Path):
    """With the first greedy token declared the EOS, generation stops at once with finish reason stop."""
    lm = OnnxLM(gpt2_export)
    first = lm.complete(PROMPTS[0], 5, temperature=0).token_ids[0]
    lm.eos_id = first
    stopped = lm.complete(PROMPTS[0], 5, temperature=0)
    assert stopped.token_ids == [] and stopped.text == "" and stopped.finish_reason == "stop"


def test_runner_imports_no_torch(gpt2_export: Path):
    code = ("import sys; from lmforge.export.onnx_runner import OnnxLM; "
            f"print(OnnxLM({str(gpt2_export)!r}).generate('First', 8, temperature=0)); "
            "assert 'torch' not in sys.modules, 'torch was imported'")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------------
# `lmforge generate` and quantize_onnx
# ---------------------------------------------------------------------------------------------------------


def test_cli_generate_from_onnx_equals_pytorch(gpt2_export: Path, hf_gpt2: Path, capsys):
    assert is_onnx_model(gpt2_export) and is_onnx_model(gpt2_export / "model.int8.onnx")
    assert not is_onnx_model(hf_gpt2)
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "generate.temperature=0", "generate.max_new_tokens=16"]
    outputs = []
    for model in (hf_gpt2, gpt2_export, gpt2_export / "model.onnx"):
        assert main(["generate", str(model), *args, "--json"]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert outputs[0] == outputs[1] == outputs[2]
    assert [r["prompt"] for r in outputs[1]] == PROMPTS and outputs[1][0]["completion_tokens"] >= 1

    assert main(["generate", str(gpt2_export), "--prompt", PROMPTS[0], "generate.temperature=0",
                 "generate.max_new_tokens=16", "--stream"]) == 0  # fmt: skip
    assert capsys.readouterr().out == PROMPTS[0] + outputs[0][0]["text"] + "\n"


def test_quantize_onnx(gpt2_export: Path, tmp_path: Path):
    """quantize_onnx on an lmforge export gives the int8 pair; on any other graph, one int8 file."""
    out = quantize_onnx(gpt2_export / "model.onnx", tmp_path / "q" / "model.int8.onnx")
    assert out == tmp_path / "q" / "model.int8.onnx" and (out.parent / "model_with_past.int8.onnx").is_file()
    graph = onnx.load(str(out), load_external_data=False)
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul") for n in graph.graph.node)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gpt2_export / name, out.parent / name)
    assert OnnxLM(out).complete(PROMPTS[0], 8, 0).token_ids == OnnxLM(gpt2_export / "model.int8.onnx").complete(
        PROMPTS[0], 8, 0).token_ids  # fmt: skip

    # A foreign graph: y = x @ W with a 256x256 weight.
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 256])],
        [onnx.numpy_helper.from_array(weight, "W")],
    )  # fmt: skip
    src = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    dst = quantize_onnx(src, tmp_path / "matmul.int8.onnx")
    assert dst.stat().st_size < 0.4 * src.stat().st_size
    x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ weight
    assert np.linalg.norm(got - expected) < 0.1 * np.linalg.norm(expected)  # int8: close, not equal


def test_generate_with_a_broken_tokenizer_beside_the_graph(gpt2_export: Path, tmp_path: Path, capsys):
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(gpt2_export / name, tmp_path / name)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "tokenizer.json" in err and "\n" not in err
    (tmp_path / "tokenizer.json").unlink()
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
