"""Every kind of model `lmforge serve` takes, served for real and checked against lmforge's own inference:
a LoRA adapter over its base, a Hugging Face directory, a classifier (alone and beside a language model),
and an ONNX export (through its KV-cache graph, and by recomputation without one)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import httpx
import openai
import pytest
import torch
from serve_helpers import PROMPTS, ServerThread

from lmforge.config import ServeConfig, load_config
from lmforge.export import run_export
from lmforge.finetune.classify import ClassifierModel, encode_for_classifier, load_classifier, save_head
from lmforge.infer.generate import SamplingParams, generate
from lmforge.infer.load import load_model
from lmforge.model.lora import BaseModelRef, LoraSpec, apply_lora, lora_layers, save_adapter
from lmforge.serve.app import create_app
from lmforge.serve.backends import OnnxKVBatchDecoder, RecomputeBatchDecoder, load_served
from lmforge.train.checkpoint import resolve_checkpoint, save_checkpoint

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


def served_texts(served, prompts: list[str] = PROMPTS[:4]) -> list[str]:
    """Greedy completions of `prompts` from a real server over `served`, sent concurrently (one batch)."""
    from concurrent.futures import ThreadPoolExecutor

    with ServerThread(create_app(served=served, dashboard=False)) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0, timeout=60)
        name = served.lm.name

        def complete(prompt: str) -> str:
            return client.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0).choices[0].text

        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(complete, prompts))


def reference_texts(path: Path, prompts: list[str] = PROMPTS[:4]) -> list[str]:
    loaded = load_model(path)
    return [c.text for c in generate(loaded.model, loaded.tokenizer, prompts, GREEDY, eos_id=loaded.eos_id)]


def test_lora_adapter_over_its_base(tiny_run: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_run)
    spec = LoraSpec(rank=4, alpha=8, targets=["attn.qkv", "attn.out", "mlp.*"])
    apply_lora(loaded.model, spec)
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(loaded.model).values():
            layer.lora_B.normal_(0, 0.3)
    adapter = tmp_path / "adapter"
    save_adapter(loaded.model, adapter, spec, BaseModelRef.of(loaded.source, loaded.model.config.to_dict()))

    served = load_served(ServeConfig(model=str(adapter)))  # the base recorded in adapter_config.json
    assert served.lm.kind == "lora" and served.lm.name == "adapter"
    expected = reference_texts(adapter)
    assert expected != reference_texts(tiny_run)  # the adapter changes what the model says
    assert served_texts(served) == expected


def test_hugging_face_directory(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    hf_dir = run_export(load_config(None, []), str(tiny_run), fmt="hf", out=tmp_path / "hf")
    served = load_served(ServeConfig(model=str(hf_dir), model_name="tiny-hf"))
    assert served.lm.kind == "hf" and served.lm.name == "tiny-hf"
    assert served_texts(served) == reference_texts(tiny_run)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")
def test_quantized_model(tiny_run: Path, tmp_path: Path) -> None:
    from lmforge.compress.quantize import quantize_model, save_quantized

    loaded = load_model(tiny_run)
    modules = quantize_model(loaded.model, "int8_weight_only")
    marker = {"format": "lmforge-quantized", "version": 1, "method": "int8_weight_only", "library": "torchao",
              "modules": modules}  # fmt: skip
    out = save_quantized(loaded.model, tmp_path / "int8", marker, loaded, {"eos_id": loaded.eos_id})
    served = load_served(ServeConfig(model=str(out)))
    assert served.lm.kind == "quantized"
    assert served_texts(served) == reference_texts(out)


@pytest.fixture(scope="module")
def classifier_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier checkpoint as `lmforge finetune --task classify` writes it: the backbone's weights, the
    head and classifier_config.json (labels, pooling, eos_id, max_length)."""
    loaded = load_model(tiny_run)
    clf = ClassifierModel(loaded.model, 3)
    torch.manual_seed(3)
    with torch.no_grad():
        clf.head.weight.normal_(0, 1.0)
    config = {"task": "classify", "labels": ["bad", "good", "meh"], "pooling": "last", "eos_id": loaded.eos_id,
              "max_length": 48}  # fmt: skip
    root = tmp_path_factory.mktemp("classifier") / "sst" / "checkpoints"
    ckpt = resolve_checkpoint(tiny_run)
    return save_checkpoint(root, 7, loaded.model.state_dict(), loaded.model.config.to_dict(), {"step": 7},
                           {"step": 7, "eos_id": loaded.eos_id}, tokenizer_file=ckpt / "tokenizer.json",
                           write_extra=lambda d: save_head(d, {"weight": clf.head.weight, "bias": clf.head.bias},
                                                           config))  # fmt: skip


def test_classifier(classifier_dir: Path, tiny_run: Path) -> None:
    texts = ["To be, or not to be", "the question", "nobler in the mind to suffer the slings and arrows of fortune" * 2]
    model, tokenizer, labels = load_classifier(classifier_dir)
    expected = []
    with torch.no_grad():  # one text at a time, no padding: the classifier as training evaluates it
        for ids in encode_for_classifier(model, tokenizer, texts):
            expected.append(model(torch.tensor([ids]))[0].softmax(-1)[0].tolist())

    served = load_served(ServeConfig(model=str(classifier_dir.parent.parent), model_name="sentiment"))
    assert served.lm is None and served.classifier.labels == labels
    with ServerThread(create_app(served=served, dashboard=False)) as running:
        out = httpx.post(f"{running.url}/v1/classify", json={"model": "sentiment", "input": texts}, timeout=30)
        assert out.status_code == 200, out.text
        body = out.json()
        assert body["model"] == "sentiment" and len(body["data"]) == len(texts)
        for item, probs in zip(body["data"], expected):
            got = [item["probabilities"][label] for label in labels]
            assert got == pytest.approx(probs, abs=1e-5)
            assert item["label"] == labels[max(range(len(probs)), key=probs.__getitem__)]
        one = httpx.post(f"{running.url}/v1/classify", json={"model": "sentiment", "input": texts[1]}).json()
        assert [one["data"][0]["probabilities"][label] for label in labels] == pytest.approx(expected[1], abs=1e-5)
        assert one["usage"]["prompt_tokens"] == len(encode_for_classifier(model, tokenizer, texts[1:2])[0])
        no_lm = httpx.post(f"{running.url}/v1/completions", json={"model": "sentiment", "prompt": "x"})
        assert no_lm.status_code == 404 and no_lm.json()["error"]["code"] == "model_not_found"
        health = httpx.get(f"{running.url}/health").json()
        assert health == {"status": "ok", "models": ["sentiment"]}


def test_language_model_and_classifier_together(tiny_run: Path, classifier_dir: Path) -> None:
    served = load_served(ServeConfig(model=str(tiny_run), classifier=str(classifier_dir)))
    with ServerThread(create_app(served=served, dashboard=False)) as running:
        models = httpx.get(f"{running.url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["tiny", "sst"]  # named after the run, not the step
        assert models[1]["kind"] == "classifier" and models[1]["labels"] == ["bad", "good", "meh"]
        out = httpx.post(f"{running.url}/v1/classify", json={"model": "sst", "input": ["a", "b"]})
        assert out.status_code == 200 and len(out.json()["data"]) == 2
        text = httpx.post(f"{running.url}/v1/completions",
                          json={"model": "tiny", "prompt": "To be", "max_tokens": 5, "temperature": 0}).json()
        assert text["usage"]["completion_tokens"] >= 1


needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime / onnxscript not installed",
)


@pytest.fixture(scope="module")
def onnx_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_with_past.onnx + model.onnx + tokenizer files, as `lmforge export --format onnx` writes them
    (the same traced module, input/output names, lmforge.* metadata and derived plain graph), but traced by
    torch's TorchScript exporter: well under a second, where the export's dynamo exporter takes 15-30 s
    on this machine."""
    import warnings

    import onnx

    from lmforge.export.common import write_tokenizer_files
    from lmforge.export.onnx import (
        META_PREFIX,
        DecoderWithPast,
        full_graph_from_past,
        graph_metadata,
        io_names,
    )

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    out.mkdir()
    loaded = load_model(tiny_run)
    model, cfg = loaded.model.float().eval(), loaded.model.config
    inputs, outputs = io_names(cfg.n_layer)
    ids = torch.randint(0, cfg.vocab_size, (2, 3))
    pasts = tuple(torch.zeros(2, cfg.n_kv_head, 5, cfg.head_dim) for _ in range(2 * cfg.n_layer))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_plus_seq"},
            "logits": {0: "batch", 1: "seq"}, **{n: {0: "batch", 2: "past"} for n in inputs[2:]},
            **{n: {0: "batch", 2: "past_plus_seq"} for n in outputs[1:]}}  # fmt: skip
    past_path = out / "model_with_past.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DecoderWithPast(model), (ids, torch.ones(2, 8, dtype=torch.int64), *pasts), str(past_path),
                          dynamo=False, input_names=inputs, output_names=outputs, dynamic_axes=axes)  # fmt: skip
    metadata = graph_metadata(loaded, model)
    graph = onnx.load(str(past_path))
    for key, value in {**metadata, META_PREFIX + "graph": "with_past"}.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(past_path))
    full_graph_from_past(past_path, out / "model.onnx", metadata)
    write_tokenizer_files(loaded, out, cfg.block_size)
    return out


@needs_onnx
def test_onnx_export_through_its_kv_graph(onnx_dir: Path, tiny_run: Path) -> None:
    served = load_served(ServeConfig(model=str(onnx_dir / "model.onnx"), model_name="tiny-onnx"))
    assert served.lm.kind == "onnx" and served.lm.model is None
    assert isinstance(served.lm.make_decoder(2), OnnxKVBatchDecoder)
    assert served_texts(served, PROMPTS) == reference_texts(tiny_run, PROMPTS)


@needs_onnx
def test_onnx_plain_graph_by_recomputation(onnx_dir: Path, tiny_run: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json"):  # no model_with_past.onnx
        shutil.copyfile(onnx_dir / name, plain / name)
    served = load_served(ServeConfig(model=str(plain)))
    assert isinstance(served.lm.make_decoder(2), RecomputeBatchDecoder)
    assert served_texts(served) == reference_texts(tiny_run)
