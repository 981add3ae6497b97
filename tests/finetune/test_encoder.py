"""`lmforge finetune --task classify` over a BERT-family encoder: a tiny random BertModel directory written by
transformers (a WordPiece tokenizer from `tokenizers`), real runs through the CLI, no mocks."""

from __future__ import annotations

import json
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ft_helpers import FAST, sentiment_records, write_jsonl
from safetensors.torch import load_file
from testkit import error_line

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.eval.evaluate import run_evaluate
from lmforge.finetune import EncoderClassifier, classifier_predictor, load_classifier
from lmforge.finetune.classify import encode_for_classifier
from lmforge.finetune.records import load_splits
from lmforge.runs import sha256_file
from lmforge.train import checkpoint as ckpt

CHARS = string.ascii_lowercase + string.digits


def make_bert_dir(out: Path, seed: int = 0) -> Path:
    """A Hugging Face BertModel directory: config.json + model.safetensors (transformers' save_pretrained),
    tokenizer.json (a WordPiece vocabulary of single characters) + tokenizer_config.json."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS, *[f"##{c}" for c in CHARS], *string.punctuation]
    tokenizer = BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True)
    tokenizer.save(str(out / "tokenizer.json"))
    specials = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
    (out / "tokenizer_config.json").write_text(json.dumps({**specials, "tokenizer_class": "BertTokenizer"}))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(out)
    return out


def make_encoder_dir(out: Path, model_type: str) -> Path:
    """A tiny DistilBERT or RoBERTa directory (transformers' classes) sharing the BERT test vocabulary."""
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    make_bert_dir(out)  # the tokenizer files; the model is replaced below
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    if model_type == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                 max_position_embeddings=64))  # fmt: skip
    else:
        model = RobertaModel(RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=66, pad_token_id=0))  # fmt: skip
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_dir(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("cls") / "planted.jsonl", sentiment_records(160))


def finetune(base: Path, data: Path, out: Path, *args: str) -> dict:
    assert main(["finetune", "--task", "classify", "--base", str(base), str(data), "--out", str(out), *FAST,
                 *args]) == 0  # fmt: skip
    return json.loads((out / "finetune_report.json").read_text())


def weights(path: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(path / name)).items()}


PLANTED = ["abxcdef", "abzcdef", "hgxfe", "hgzfe"]  # 'x' is good, 'z' is bad


def test_full_finetune_learns_loads_and_evaluates(bert: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    report = finetune(bert, cls_data, out, "train.max_steps=100", "train.optim.lr=3e-3",
                      "finetune.class_weights=balanced")  # fmt: skip
    assert report["best"] >= 0.9 and report["best_eval"]["accuracy"] >= 0.9
    assert report["trainable_parameters"] == report["parameters"]  # every encoder weight, plus the head
    best = ckpt.read_pointer(out / "checkpoints", "best")
    assert best is not None and best.name == f"step-{report['best_step']:07d}"
    # The encoder's state dict under transformers' own names; the config records the base's config.json.
    saved = weights(best)
    base_state = load_file(str(bert / "model.safetensors"))
    assert set(saved) == {k for k in base_state if not k.startswith("pooler.")}
    assert not torch.equal(saved["embeddings.word_embeddings.weight"], base_state["embeddings.word_embeddings.weight"])
    model_config = json.loads((best / "model_config.json").read_text())
    assert model_config["architecture"] == "hf-encoder"
    assert model_config["hf_config"] == json.loads((bert / "config.json").read_text())
    assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["pooling"] == "mean"  # auto, resolved

    model, tokenizer, labels = load_classifier(out)
    assert isinstance(model, EncoderClassifier) and model.pooling == "mean" and labels == ["bad", "good"]
    assert model.config.block_size == 64  # finetune.max_length: the base's 64 positions
    ids = encode_for_classifier(model, tokenizer, PLANTED)
    assert ids[0][0] == tokenizer.token_to_id("[CLS]") and ids[0][-1] == tokenizer.token_to_id("[SEP]")
    probs = model.predict(ids)
    assert [labels[i] for i in probs.argmax(-1).tolist()] == ["good", "bad", "good", "bad"]

    # The evaluation stage's classification seam gives the metrics fine-tuning measured on the same rows.
    val_rows = tmp_path / "val.jsonl"
    write_jsonl(val_rows, sentiment_records(40, seed=7))
    cfg = load_config(None, [f"eval.classify.data={val_rows}", "eval.tasks=[classify]"])
    result = run_evaluate(cfg, out=tmp_path / "eval", predictors={"classify": classifier_predictor(out)})
    assert result["tasks"]["classify"]["metrics"]["accuracy"] >= 0.9
    assert (tmp_path / "eval" / "report.json").is_file()


def test_lora_adapts_the_attention_projections(bert: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    # With activation checkpointing (transformers' own, non-reentrant): the adapters still learn under it.
    report = finetune(bert, cls_data, out, "--method", "lora", "train.max_steps=10", "train.optim.lr=1e-2",
                      "lora.rank=4", "finetune.pooling=cls", "train.activation_checkpointing=true")  # fmt: skip
    assert report["trainable_parameters"] < report["parameters"] / 4
    latest = ckpt.read_pointer(out / "checkpoints", "latest")
    assert latest is not None and not (latest / "model.safetensors").exists() and ckpt.verify(latest) is None
    adapter = weights(latest, "adapter.safetensors")
    modules = sorted({k.rsplit(".", 1)[0] for k in adapter})
    # lora.targets left at the decoder default: the encoder's query/key/value and attention output.
    expected = sorted(f"encoder.layer.{i}.attention.{m}" for i in range(2)
                      for m in ("self.query", "self.key", "self.value", "output.dense"))  # fmt: skip
    assert modules == expected
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if k.endswith("lora_B"))  # it trained
    adapter_config = json.loads((latest / "adapter_config.json").read_text())
    assert adapter_config["base_model"]["path"] == str(bert.resolve())

    model, _, _ = load_classifier(out)  # the base's own weights under the adapter, and the head
    assert model.pooling == "cls"
    base_state = load_file(str(bert / "model.safetensors"))
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, adapter[name] if name in adapter else base_state[name]), name
    assert torch.equal(model.head.weight, weights(latest, "classifier_head.safetensors")["weight"])
    assert (out / "adapter" / "adapter.safetensors").is_file()

    # An adapter is applied only over the base it was trained on: point it at another encoder.
    other = make_bert_dir(tmp_path / "other-bert", seed=1)
    config_file = latest / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model"]["path"] = str(other)
    config_file.write_text(json.dumps(config))
    sums = json.loads((latest / "checksums.json").read_text())
    sums["sha256"][config_file.name] = sha256_file(config_file)  # a deliberate edit, not corruption
    (latest / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(LmforgeError, match="trained on another base model"):
        load_classifier(latest)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_gives_identical_weights(bert: Path, cls_data: Path, tmp_path: Path, method: str) -> None:
    args = ["--method", method, "train.max_steps=20", "train.optim.lr=3e-3", "train.log_every=1",
            "train.keep_last=5"]  # fmt: skip
    out = tmp_path / "run"
    finetune(bert, cls_data, out, *args)
    root = out / "checkpoints"
    name = "model.safetensors" if method == "full" else "adapter.safetensors"
    final = {**weights(root / "step-0000020", name), **weights(root / "step-0000020", "classifier_head.safetensors")}
    shutil.rmtree(root / "step-0000020")  # as if killed after the step-10 checkpoint
    finetune(bert, cls_data, out, *args, "--resume")
    again = {**weights(root / "step-0000020", name), **weights(root / "step-0000020", "classifier_head.safetensors")}
    assert final.keys() == again.keys()
    for key in final:  # dropout is on: the RNG streams are restored too
        assert torch.equal(final[key], again[key]), key
    assert f"resuming from {root / 'step-0000010'}" in (out / "logs" / "finetune.log").read_text()


@pytest.mark.parametrize("model_type,projections,pooling",
                         [("distilbert", ("q_lin", "k_lin", "v_lin", "out_lin"), "max"),
                          ("roberta", ("self.query", "self.key", "self.value"), "auto")])  # fmt: skip
def test_other_encoder_families(cls_data: Path, tmp_path: Path, model_type: str, projections: tuple[str, ...],
                                pooling: str) -> None:  # fmt: skip
    base = make_encoder_dir(tmp_path / model_type, model_type)
    out = tmp_path / "run"
    report = finetune(base, cls_data, out, "--method", "lora", "train.max_steps=5", "lora.rank=2",
                      f"finetune.pooling={pooling}")  # fmt: skip
    assert report["steps"] == 5 and report["trainable_parameters"] < report["parameters"] / 4
    latest = ckpt.read_pointer(out / "checkpoints", "latest")
    assert latest is not None
    modules = {k.rsplit(".", 1)[0] for k in weights(latest, "adapter.safetensors")}
    assert all(any(m.endswith(p) for m in modules) for p in projections), modules
    # Loaded back, it predicts what fine-tuning measured on the same validation rows.
    model, _, _ = load_classifier(out)
    assert isinstance(model, EncoderClassifier) and model.backbone.config.model_type == model_type
    assert model.pooling == ("mean" if pooling == "auto" else pooling)
    _, val = load_splits(cls_data, None, 0.1, 1337)  # the recipe's split: finetune.val_fraction, run.seed
    predicted = classifier_predictor(out)([r.fields["text"] for r in val])
    accuracy = sum(p == r.fields["label"] for p, r in zip(predicted, val)) / len(val)
    assert accuracy == pytest.approx(report["best_eval"]["accuracy"])


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# --------------------------------------------------------------------------------------------------------


def run_bad(base: Path, data: Path, out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["finetune", "--base", str(base), str(data), "--out", str(out), *FAST, *args])
    assert code == 2
    return error_line(capsys)


def test_bad_encoder_inputs(bert: Path, cls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    line = run_bad(t5, cls_data, out, capsys, "--task", "classify")
    assert str(t5 / "config.json") in line and "model_type 't5'" in line and "bert" in line and "llama" in line
    line = run_bad(bert, cls_data, out, capsys, "--task", "sft")
    assert "bert encoder" in line and "--task classify" in line

    pickled = tmp_path / "pickled-bert"
    shutil.copytree(bert, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    line = run_bad(pickled, cls_data, out, capsys, "--task", "classify")
    assert "no *.safetensors" in line and str(pickled) in line

    line = run_bad(bert, cls_data, out, capsys, "--task", "classify", "finetune.max_length=100")
    assert "finetune.max_length=100" in line and "64" in line
    line = run_bad(bert, cls_data, out, capsys, "--task", "classify", "finetune.pooling=first")
    assert "finetune.pooling" in line
    line = run_bad(bert, cls_data, out, capsys, "--task", "classify", "finetune.pooling=concat")
    assert "finetune.pooling" in line and "'concat'" in line and "for an encoder" in line
    line = run_bad(bert, cls_data, out, capsys, "--task", "classify", "finetune.lm_loss_weight=0.2")
    assert "finetune.lm_loss_weight" in line and "decoder" in line
    assert not (out / "checkpoints").exists()


def test_loading_an_encoder_keeps_torchao_import_noise_off_the_console(bert: Path) -> None:
    """transformers imports torchao while loading a model; torchao then warns about CUDA-only kernels this
    machine cannot load, and torch about enums it registers. A fresh process shows the user none of it."""
    code = f"from lmforge.finetune.encoder import load_encoder_base; load_encoder_base({str(bert)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Failed to load" not in result.stderr and "Enum subclass" not in result.stderr, result.stderr
