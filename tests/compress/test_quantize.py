"""`lmforge quantize`: torchao int8 models that save, load (load_model, generate, evaluate) and report, and
onnxruntime int8 for an ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compress_helpers import QUICK_EVAL, error_line, report_of
from safetensors import safe_open

from lmforge.cli import main
from lmforge.infer.load import load_model


@pytest.fixture(scope="module")
def weight_only(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "int8wo"
    assert main(["quantize", str(teacher), "--out", str(out), *QUICK_EVAL]) == 0
    return out


def test_weight_only_saves_int8_loads_and_reports(weight_only: Path, teacher: Path, shards: Path) -> None:
    model_dir = weight_only / "model"
    marker = json.loads((model_dir / "quantization.json").read_text(encoding="utf-8"))
    assert marker["method"] == "int8_weight_only" and marker["library"] == "torchao"
    # Every Linear of the blocks quantized; the head tied to the embedding stays float.
    assert marker["modules"] == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")]
    with safe_open(str(model_dir / "quantized.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    for module in marker["modules"]:
        assert dtypes[f"{module}._weight_qdata"] == "I8"
    # The embedding table (the tied head) is stored int8 per row, and used in float after loading.
    assert marker["int8_storage"] == ["wte.weight", "wpe.weight"]
    assert dtypes["wte._weight_qdata"] == "I8" and "lm_head.weight" not in dtypes

    report = report_of(weight_only)
    before, after = report["before"], report["after"]
    assert after["bytes_on_disk"] == (model_dir / "quantized.safetensors").stat().st_size
    assert after["bytes_on_disk"] < 0.6 * before["bytes_on_disk"]
    assert after["parameters"] == before["parameters"]
    assert abs(after["perplexity"] / before["perplexity"] - 1) < 0.02
    assert after["decode_tokens_per_s"] > 0
    manifest = json.loads((weight_only / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "finished"
    assert any(o["path"].endswith("quantized.safetensors") for o in manifest["outputs"])

    # The run directory loads like any model, and its logits follow the float model's.
    quantized, original = load_model(weight_only), load_model(teacher)
    assert quantized.kind == "quantized" and quantized.tokenizer is not None
    assert type(quantized.model.blocks[0].mlp.up.weight).__name__ == "Int8Tensor"
    assert type(quantized.model.wte.weight.data) is torch.Tensor and quantized.model.lm_head.weight is quantized.model.wte.weight
    torch.testing.assert_close(quantized.model.wte.weight, original.model.wte.weight, atol=0.01, rtol=0.01)
    ids = torch.from_numpy(np.fromfile(shards / "val.bin", dtype="<u2")[:64].astype(np.int64))[None]
    with torch.no_grad():
        q_logits, f_logits = quantized.model(ids)[0], original.model(ids)[0]
    assert (q_logits - f_logits).abs().mean() < 0.02 * f_logits.abs().mean()
    assert (q_logits.argmax(-1) == f_logits.argmax(-1)).float().mean() > 0.9


def test_dynamic_int8_generates_and_evaluates(teacher: Path, tmp_path: Path, shared_data: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "dyn"
    assert main(["quantize", str(teacher), "--out", str(out), "--method", "int8_dynamic", *QUICK_EVAL]) == 0
    table = capsys.readouterr().out
    assert "| size on disk (MiB) |" in table and "int8_dynamic" in table
    assert report_of(out)["method"] == "int8_dynamic"

    assert main(["generate", str(out), "--prompt", "ROMEO:", "generate.max_new_tokens=12",
                 "generate.temperature=0", "--json"]) == 0  # fmt: skip
    completion = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(completion["text"]) > 0

    doc = tmp_path / "doc.txt"
    doc.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[-4000:], encoding="utf-8")
    losses = []
    for model, name in ((out, "eval-q"), (teacher, "eval-f")):
        assert main(["evaluate", str(model), "--task", "lm", f"eval.lm.files=[{doc}]", "--out", str(tmp_path / name)]) == 0
        losses.append(json.loads((tmp_path / name / "report.json").read_text())["tasks"]["lm"]["metrics"]["loss"])
    assert abs(losses[0] - losses[1]) < 0.02 * losses[1]


def test_skip_keeps_layers_in_float(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "skip"
    assert main(["quantize", str(teacher), "--out", str(out), "compress.quantize.skip=[blocks.0.*]",
                 "compress.quantize.embeddings=false", "compress.eval.windows=0", "compress.eval.gen_tokens=0"]) == 0  # fmt: skip
    loaded = load_model(out / "model")
    torch.testing.assert_close(loaded.model.wte.weight, load_model(teacher).model.wte.weight, atol=0, rtol=0)
    assert type(loaded.model.blocks[0].attn.qkv.weight).__name__ != "Int8Tensor"
    assert type(loaded.model.blocks[1].attn.qkv.weight).__name__ == "Int8Tensor"
    assert report_of(out)["after"]["perplexity"] is None  # windows=0: not measured


def test_bad_inputs(teacher: Path, weight_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no usable checkpoint" in error_line(capsys, ["quantize", str(empty), "--out", str(tmp_path / "a")])
    assert "no such model" in error_line(capsys, ["quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    line = error_line(capsys, ["quantize", str(teacher), "--method", "int4", "--out", str(tmp_path / "c")])
    assert "compress.quantize.method" in line and "int8_dynamic" in line
    assert "already quantized" in error_line(capsys, ["quantize", str(weight_only), "--out", str(tmp_path / "d")])
    line = error_line(capsys, ["export", str(weight_only), "--format", "hf", "--out", str(tmp_path / "e")])
    assert "quantized model cannot be exported" in line and not (tmp_path / "e").exists()

    # A damaged quantized model is refused in one line wherever it is loaded.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (weight_only / "model").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "quantized.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    line = error_line(capsys, ["generate", str(broken), "--prompt", "hi"])
    assert "quantized.safetensors does not match its checksum" in line


def test_onnx_model_goes_through_onnxruntime(shards: Path, tmp_path: Path) -> None:
    """A real ONNX graph (embedding -> MatMul -> logits) quantized by onnxruntime via the exporter's
    quantize_onnx, and measured with onnxruntime before and after."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("lmforge.export.onnx")
    from onnx import TensorProto, helper, numpy_helper

    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.normal(0, 1, (vocab, 64)).astype(np.float32), "emb")
    head = numpy_helper.from_array(rng.normal(0, 0.2, (64, vocab)).astype(np.float32), "head")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["h"]), helper.make_node("MatMul", ["h", "head"], ["logits"])],
        "bigram", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])], [emb, head],
    )  # fmt: skip
    source = tmp_path / "export"
    source.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source / "model.onnx"))
    (source / "tokenizer.json").write_bytes((shards / "tokenizer.json").read_bytes())

    out = tmp_path / "q-onnx"
    assert main(["quantize", str(source), "--data", str(shards), "--out", str(out), *QUICK_EVAL]) == 0
    report = report_of(out)
    assert report["method"] == "onnx_dynamic_int8"
    before, after = report["before"], report["after"]
    assert after["bytes_on_disk"] < 0.5 * before["bytes_on_disk"]
    assert abs(after["val_loss"] - before["val_loss"]) < 0.05 * before["val_loss"]
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "tokenizer.json").is_file()


def test_server_serves_the_quantized_model(weight_only: Path, tmp_path: Path) -> None:
    """`lmforge serve`'s loader and app on a real uvicorn (127.0.0.1): greedy completions of the int8 model
    equal `generate` on it."""
    import threading
    import time

    httpx = pytest.importorskip("httpx")
    uvicorn = pytest.importorskip("uvicorn")
    from lmforge.config import ServeConfig
    from lmforge.infer.generate import SamplingParams, generate
    from lmforge.serve import bind_socket
    from lmforge.serve.app import create_app
    from lmforge.serve.backends import load_served

    served = load_served(ServeConfig(model=str(weight_only)))
    app = create_app(served=served, max_batch_size=4, runs_dir=str(tmp_path), dashboard=False)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions"
        body = {"model": weight_only.name, "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        text = httpx.post(url, json=body, timeout=60).json()["choices"][0]["text"]
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    loaded = load_model(weight_only)
    expected = generate(loaded.model, loaded.tokenizer, ["ROMEO:"],
                        SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))[0].text  # fmt: skip
    assert text == expected and len(text) > 0
