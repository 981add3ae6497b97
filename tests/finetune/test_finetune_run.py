"""`lmforge finetune` end to end on a tiny base model: real runs through the CLI, no mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from ft_helpers import FAST, alpaca_records, sentiment_records, write_jsonl
from safetensors.torch import load_file
from testkit import error_line, torchrun

from lmforge.cli import main
from lmforge.finetune import load_classifier
from lmforge.finetune.classify import encode_for_classifier
from lmforge.infer.load import load_model
from lmforge.runs import sha256_file
from lmforge.train import checkpoint as ckpt


def finetune(base: Path, data: Path, out: Path, *args: str) -> dict:
    assert main(["finetune", "--base", str(base), str(data), "--out", str(out), *FAST, *args]) == 0
    return json.loads((out / "finetune_report.json").read_text())


def events(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == kind]


def weights(path: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(path / name)).items()}


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("sft") / "repeat.jsonl", alpaca_records(48))


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("cls") / "planted.jsonl", sentiment_records(160))


def test_sft_packed_loss_decreases_and_checkpoint_loads(base: Path, sft_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    report = finetune(base, sft_data, out, "--task", "sft", "finetune.packing=true", "train.max_steps=40",
                      "train.optim.lr=3e-3", "finetune.max_length=48")  # fmt: skip
    evals = events(out, "eval")
    assert evals[-1]["val_loss"] < 0.6 * evals[0]["val_loss"]
    assert report["data"]["rows"] < report["data"]["train"]["examples"]  # packed
    assert report["data"]["train"]["truncated"] == 0
    loaded = load_model(out)  # an ordinary checkpoint: generate and chat load it as it is
    assert loaded.kind == "lmforge" and "chat_template" in loaded.tokenizer_config
    assert events(out, "sample")


def test_classify_planted_signal_best_by_macro_f1(base: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cls"
    report = finetune(base, cls_data, out, "--task", "classify", "train.max_steps=60", "train.optim.lr=3e-3",
                      "finetune.class_weights=balanced", "finetune.focal_gamma=1.0")  # fmt: skip
    assert report["labels"] == ["bad", "good"] and report["select_metric"] == "macro_f1"
    assert report["best"] >= 0.9 and report["best_eval"]["accuracy"] >= 0.9
    best = ckpt.read_pointer(out / "checkpoints", "best")
    assert best is not None and best.name == f"step-{report['best_step']:07d}"
    model, tokenizer, labels = load_classifier(out)
    assert model.pooling == "last" and labels == ["bad", "good"]
    probs = model.predict(encode_for_classifier(model, tokenizer, ["abxcdef", "abzcdef", "hgxfe", "hgzfe"]))
    assert [labels[i] for i in probs.argmax(-1).tolist()] == ["good", "bad", "good", "bad"]
    # The evaluation stage scores the run through its head: `lmforge evaluate RUN --task classify`.
    gold = ["good", "bad", "bad", "bad"]  # the third against the prediction above: accuracy 3/4
    data = write_jsonl(tmp_path / "eval.jsonl", [{"text": t, "label": g} for t, g in
                                                 zip(["abxcdef", "abzcdef", "hgxfe", "hgzfe"], gold)])  # fmt: skip
    assert main(["evaluate", str(out), "--task", "classify", f"eval.classify.data={data}",
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    scored = json.loads((tmp_path / "eval" / "report.json").read_text())["tasks"]["classify"]
    assert scored["n"] == 4 and scored["metrics"]["accuracy"] == 0.75


def test_classify_with_auxiliary_lm_loss_and_concat_pooling(base: Path, cls_data: Path, tmp_path: Path) -> None:
    """finetune.lm_loss_weight: the training loss carries the next-token loss too (far above the
    classification loss it is evaluated by), and the classifier still learns the planted signal; with
    pooling=concat its head reads [last, max, mean] and loads back as such."""
    out = tmp_path / "cls-lm"
    report = finetune(base, cls_data, out, "--task", "classify", "train.max_steps=60", "train.optim.lr=3e-3",
                      "finetune.lm_loss_weight=0.2", "finetune.pooling=concat")  # fmt: skip
    assert report["best"] >= 0.9
    model, tokenizer, labels = load_classifier(out)
    assert model.pooling == "concat" and model.head.in_features == 3 * model.config.n_embd
    probs = model.predict(encode_for_classifier(model, tokenizer, ["abxcdef", "abzcdef", "hgxfe", "hgzfe"]))
    assert [labels[i] for i in probs.argmax(-1).tolist()] == ["good", "bad", "good", "bad"]
    plain = tmp_path / "cls-plain"  # the same seed and steps without it: same data order, same first batches
    finetune(base, cls_data, plain, "--task", "classify", "train.max_steps=5", "train.optim.lr=3e-3")
    with_lm, without = events(out, "train")[0], events(plain, "train")[0]
    assert with_lm["step"] == without["step"]
    assert with_lm["loss"] - without["loss"] > 0.2 * 1.0  # 0.2 x the next-token loss, over 1 nat on these texts
    assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["lm_loss_weight"] == 0.2


def test_lora_saves_only_the_adapter_and_loads_back(base: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    # Activation checkpointing on: recomputed blocks with frozen weights still train the adapters.
    report = finetune(base, cls_data, out, "--task", "classify", "--method", "lora", "train.max_steps=10",
                      "train.optim.lr=1e-2", "lora.rank=4", "train.activation_checkpointing=true")  # fmt: skip
    assert report["trainable_parameters"] < report["parameters"] / 5
    latest = ckpt.read_pointer(out / "checkpoints", "latest")
    assert not (latest / "model.safetensors").exists() and ckpt.verify(latest) is None
    adapter = weights(latest, "adapter.safetensors")
    assert adapter and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if k.endswith("lora_B"))  # it trained
    # Back: the base's own weights under the adapter, the adapter's, and the head.
    model, _, _ = load_classifier(out)
    base_state = load_model(base).model.state_dict()
    for name, tensor in model.backbone.state_dict().items():
        expected = adapter[name] if name in adapter else base_state[name]
        assert torch.equal(tensor, expected), name
    assert torch.equal(model.head.weight, weights(latest, "classifier_head.safetensors")["weight"])
    assert (out / "adapter" / "adapter.safetensors").is_file() and load_model(out / "adapter").kind == "lora"


@pytest.mark.parametrize("task,method", [("sft", "full"), ("classify", "lora")])
def test_resume_gives_identical_weights(base: Path, sft_data: Path, cls_data: Path, tmp_path: Path, task: str,
                                        method: str) -> None:  # fmt: skip
    data = sft_data if task == "sft" else cls_data
    args = ["--task", task, "--method", method, "train.max_steps=20", "train.optim.lr=3e-3", "train.log_every=1",
            "finetune.packing=true", "train.keep_last=5",
            f"finetune.group_by_length={str(task == 'classify').lower()}"]  # fmt: skip
    out = tmp_path / "run"
    finetune(base, data, out, *args)
    root = out / "checkpoints"
    name = "model.safetensors" if method == "full" else "adapter.safetensors"
    final, logged = weights(root / "step-0000020", name), events(out, "train")
    # As if killed after the step-10 checkpoint: the later one is gone; --resume continues from step 10.
    shutil.rmtree(root / "step-0000020")
    finetune(base, data, out, *args, "--resume")
    again = weights(root / "step-0000020", name)
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key
    assert f"resuming from {root / 'step-0000010'}" in (out / "logs" / "finetune.log").read_text()
    assert {e["step"]: e["loss"] for e in events(out, "train")} == {e["step"]: e["loss"] for e in logged}


@pytest.mark.parametrize("task,method,strategy", [("sft", "full", "ddp"), ("classify", "lora", "ddp"),
                                                  ("sft", "lora", "fsdp")])  # fmt: skip
def test_two_processes_under_torchrun_match_one_and_resume_in_one(
    base: Path, sft_data: Path, cls_data: Path, tmp_path: Path, task: str, method: str, strategy: str
) -> None:
    """2 CPU processes (gloo), DDP or FSDP2: each rank takes its half of the same global batch, so the run equals
    one process accumulating the same two micro-batches; its checkpoint resumes in one process."""
    data = sft_data if task == "sft" else cls_data
    args = ["--base", str(base), str(data), *FAST, "--task", task, "--method", method, "train.max_steps=8",
            "train.log_every=1", "train.optim.lr=3e-3", "train.keep_last=5", "train.save_every=4",
            "finetune.packing=true", f"finetune.group_by_length={str(task == 'classify').lower()}"]  # fmt: skip
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["finetune", *args, "train.micro_batch_size=4", "--out", str(single)]) == 0
    result = torchrun("finetune", *args, "--strategy", strategy, "--out", str(ddp))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = ({e["step"]: e["loss"] for e in events(run, "train")} for run in (single, ddp))
    assert one.keys() == two.keys() == set(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    name = "model.safetensors" if method == "full" else "adapter.safetensors"
    shutil.rmtree(ddp / "checkpoints" / "step-0000008")
    assert main(["finetune", *args, "train.micro_batch_size=4", "--resume", "--out", str(ddp)]) == 0
    ref, got = (weights(run / "checkpoints" / "step-0000008", name) for run in (single, ddp))
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)


def test_freeze_keeps_chosen_layers(base: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "frozen"
    finetune(base, cls_data, out, "--task", "classify", "train.max_steps=5", "finetune.freeze=[wte, wpe, blocks.0.*]")
    trained = weights(ckpt.read_pointer(out / "checkpoints", "latest"))
    start = weights(ckpt.resolve_checkpoint(base))
    for name in trained:
        same = torch.equal(trained[name], start[name])
        assert same == (name.startswith(("wte", "wpe", "blocks.0.", "lm_head"))), name


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# --------------------------------------------------------------------------------------------------------


def run_bad(base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["finetune", "--base", str(base), str(data), "--out", str(tmp_path / "bad"), *FAST, *args])
    assert code == 2
    return error_line(capsys)


def test_bad_inputs(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = alpaca_records(4)
    missing = write_jsonl(tmp_path / "missing.jsonl", [*good, {"instruction": "Repeat", "input": "ab"}])
    line = run_bad(base, missing, tmp_path, capsys, "--task", "sft")
    assert f"{missing}:5" in line and "'output'" in line
    empty = write_jsonl(tmp_path / "empty.jsonl", [*good, {"instruction": "Repeat", "output": "  "}])
    line = run_bad(base, empty, tmp_path, capsys, "--task", "sft")
    assert f"{empty}:5" in line and "empty response" in line
    labelled = write_jsonl(tmp_path / "labels.jsonl", [{"text": "abc", "label": "good"}, {"text": "x", "label": "meh"}])
    line = run_bad(base, labelled, tmp_path, capsys, "--task", "classify", "finetune.labels=[good, bad]")
    assert f"{labelled}:2" in line and "label 'meh' is not in the label set" in line
    no_text = write_jsonl(tmp_path / "no_text.jsonl", [{"text": "abc", "label": "good"}, {"label": "bad"}])
    line = run_bad(base, no_text, tmp_path, capsys, "--task", "classify")
    assert f"{no_text}:2" in line and "'text'" in line
    line = run_bad(base, labelled, tmp_path, capsys, "--task", "sft", "finetune.lm_loss_weight=0.5")
    assert "finetune.lm_loss_weight" in line and "task=classify" in line
    line = run_bad(base, no_text, tmp_path, capsys, "--task", "classify", "finetune.lm_loss_weight=-1")
    assert "finetune.lm_loss_weight must be >= 0" in line
    line = run_bad(tmp_path / "nowhere", missing, tmp_path, capsys, "--task", "sft")
    assert "base model not found" in line and "nowhere" in line
    assert not (tmp_path / "bad" / "checkpoints").exists()
    # run.on_error=skip: bad records are skipped and counted instead
    report = finetune(base, empty, tmp_path / "skip", "--task", "sft", "run.on_error=skip", "train.max_steps=2",
                      "finetune.val_fraction=0.3")  # fmt: skip
    assert report["data"]["train"]["skipped"] + report["data"]["val"]["skipped"] == 1


def test_chat_template_that_fails_to_render(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    for path in broken.rglob("tokenizer_config.json"):  # the run's copy and each checkpoint's
        config = json.loads(path.read_text())
        config["chat_template"] = "{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}"
        path.write_text(json.dumps(config))
        sums_file = path.with_name("checksums.json")
        if sums_file.is_file():  # a deliberate edit, not corruption: re-sign it
            sums = json.loads(sums_file.read_text())
            sums["sha256"][path.name] = sha256_file(path)
            sums_file.write_text(json.dumps(sums))
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    line = run_bad(broken, data, tmp_path, capsys, "--task", "sft")
    assert "chat template failed to render" in line and f"{data}:1" in line and "TypeError" in line
