"""`lmforge explain`: attributions that find a planted signal in a classifier trained here, the logit lens
against the model's own prediction, explicit attention weights against SDPA, and the CLI's files and errors."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))

from ft_helpers import CHARS, FAST, make_base, write_jsonl
from testkit import error_line

from lmforge.cli import main
from lmforge.config import ExplainConfig, TokenizerConfig
from lmforge.eval.explain import (
    attention_maps,
    explain_text,
    keep_attention_weights,
    load_explainable,
    logit_lens,
    ranked,
)
from lmforge.model.gpt import GPT, GPTConfig
from lmforge.tokenizer.train import char_tokenizer, save_tokenizer, special_tokens
from lmforge.train.checkpoint import save_checkpoint


def planted(n: int, seed: int) -> list[dict[str, str]]:
    """One letter decides the label: 'x' good, 'z' bad, neither neutral, among random filler. With the
    neutral class the model must look for both letters (with two classes it may learn 'x or not' only)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["bad", "good", "neutral"])
        filler = [rng.choice("abcdefgh") for _ in range(rng.randint(4, 12))]
        if label != "neutral":
            filler.insert(rng.randint(0, len(filler)), "x" if label == "good" else "z")
        out.append({"text": "".join(filler), "label": label})
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    base = make_base(root / "base")
    data = write_jsonl(root / "planted.jsonl", planted(240, 0))
    assert main(["finetune", "--base", str(base), str(data), "--out", str(root / "cls"), *FAST, "--task", "classify",
                 "train.max_steps=60", "train.optim.lr=3e-3"]) == 0  # fmt: skip
    report = json.loads((root / "cls" / "finetune_report.json").read_text())
    assert report["best"] >= 0.9  # it learned the signal
    return root / "cls"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LM with weights large enough for varied, untied predictions (llama: grouped-query attention)."""
    run = tmp_path_factory.mktemp("lm") / request.param
    tc = TokenizerConfig(kind="char")
    tokenizer = char_tokenizer(CHARS, special_tokens(tc), tc.unk_token)
    save_tokenizer(tokenizer, run, tc, model_max_length=64)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=64, n_layer=3, n_head=4,
                    n_kv_head=2 if request.param == "llama" else None, n_embd=32, flavour=request.param)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), cfg.to_dict(), {"step": 1}, {"step": 1},
                    tokenizer_file=run / "tokenizer.json")  # fmt: skip
    return run


def test_both_attribution_methods_rank_the_planted_token_first(classifier: Path) -> None:
    ex = load_explainable(classifier)
    assert ex.kind == "classifier" and ex.labels == ["bad", "good", "neutral"]
    texts = [r for r in planted(40, 99) if r["label"] != "neutral"][:10]
    for record in texts:
        result = explain_text(ex, record["text"], ExplainConfig(target=record["label"]), ["attribution"])
        assert result["prediction"]["predicted"] == record["label"]
        special = [t["special"] for t in result["tokens"]]
        planted_letter = "x" if record["label"] == "good" else "z"
        for method in ("integrated_gradients", "occlusion"):
            scores = result["attribution"][method]["scores"]
            top = ranked(scores, special)[0]
            assert result["tokens"][top]["text"] == planted_letter, (record, method, scores)
            assert scores[top] > 0
        # Integrated gradients are complete: they add up to p(text) - p(baseline), up to the integration error.
        attribution = result["attribution"]
        total = sum(attribution["integrated_gradients"]["scores"])
        gap = attribution["p_text"] - attribution["p_baseline"]
        assert abs(total - gap) <= attribution["integrated_gradients"]["delta"] + 1e-4


def test_logit_lens_last_layer_is_the_greedy_next_token(lm: Path) -> None:
    ex = load_explainable(lm)
    model, tokenizer = ex.backbone, ex.tokenizer
    text = "To be, or not to be"
    ids = tokenizer.encode(text).ids
    probs, top_ids = logit_lens(model, ids, top_k=3)
    assert probs.shape == top_ids.shape == (model.config.n_layer + 1, len(ids), 3)
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=1, temperature=0)[0, -1].item()
    assert top_ids[-1, -1, 0].item() == greedy
    logits, _ = model(torch.tensor([ids]))
    assert torch.equal(top_ids[-1, :, 0], logits[0].argmax(-1))  # at every position
    assert not torch.equal(top_ids[0], top_ids[-1])  # the layers do change the prediction
    result = explain_text(ex, text, ExplainConfig(top_k=3), ["logit_lens"])
    assert result["logit_lens"]["top"][-1][-1][0]["id"] == greedy
    assert result["prediction"]["next"][0]["id"] == greedy
    assert result["logit_lens"]["layers"] == ["embed", "layer 1", "layer 2", "layer 3"]


def test_explicit_attention_weights_match_sdpa(lm: Path) -> None:
    model = load_explainable(lm).backbone
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[1, :4] = 0  # a left-padded row goes through the masked path
    reference = [model(x)[0], model(x, attention_mask=pad)[0]]
    with keep_attention_weights(model) as layers:
        explicit = [model(x)[0], model(x, attention_mask=pad)[0]]
        weights = layers[0].weights
    for a, b in zip(reference, explicit):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert all(layer.weights is None and not layer.keep_weights for layer in layers)
    assert weights.shape == (2, model.config.n_head, 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, model.config.n_head, 12))
    assert weights[1, :, 4:, :4].abs().max() == 0  # nobody attends to padding
    maps = attention_maps(model, x[0].tolist())
    assert maps.shape == (model.config.n_layer, model.config.n_head, 12, 12)
    assert torch.equal(maps, maps.tril())  # causal: no weight on later tokens


def test_cli_classifier_writes_png_html_json_and_colours(classifier: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "explained"
    assert main(["explain", str(classifier), "--prompt", "abzcdefg", "--out", str(out), "explain.color=always"]) == 0
    printed = capsys.readouterr().out
    assert "prediction: bad" in printed and "\x1b[48;5;" in printed  # highlighted in the terminal
    result = json.loads((out / "explain.json").read_text())
    assert result["methods"] == ["attention", "attribution"]
    page = (out / "attribution.html").read_text()
    assert page.count("<span") == 2 * len(result["tokens"]) and "integrated gradients" in page
    layers = result["model"]["layers"]
    for i in range(1, layers + 1):
        assert (out / f"attention_layer_{i:02d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "explain"
    assert {o["path"] for o in manifest["outputs"]} >= {"explain.json", "attribution.html", "attention_layer_01.png"}
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left

    assert main(["explain", str(classifier), "-p", "abzcdefg", "--out", str(out), "explain.color=never"]) == 0
    assert "\x1b[" not in capsys.readouterr().out


def test_cli_language_model_logit_lens(lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lens"
    assert main(["explain", str(lm), "--prompt", "hello", "--method", "logit_lens", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "logit lens at the last token 'o'" in printed and "layer 3" in printed
    assert (out / "logit_lens.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "attribution.html").exists() and not (out / "attention_layer_01.png").exists()


def test_bad_input_one_line(classifier: Path, lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "x")]
    cases = [
        (["explain", str(tmp_path / "nope"), "-p", "ab", *out], f"error: no such model: {tmp_path / 'nope'}"),
        (["explain", str(classifier), *out], "error: no text given (pass --prompt TEXT, or set explain.prompt)"),
        (["explain", "-p", "ab", *out], "error: no model given (pass MODEL, or set explain.model)"),
        (["explain", str(classifier), "-p", "ab", "--method", "logit_lens", *out],
         "error: explain.methods: logit_lens needs a language model; this model is a classifier"),
        (["explain", str(classifier), "-p", "ab", "explain.methods=[saliency]", *out],
         "error: explain.methods: unknown method 'saliency' (choose from attention, logit_lens, attribution)"),
        (["explain", str(classifier), "-p", "ab", "--target", "great", *out],
         "error: explain.target: 'great' is not a class of this model (bad, good, neutral)"),
        (["explain", str(lm), "-p", "ab", "--target", "xyz", *out],
         "error: explain.target: 'xyz' is not one token of this tokenizer (3 tokens)"),
        (["explain", str(lm), "-p", "ab", "explain.baseline=<nope>", *out],
         "error: explain.baseline: '<nope>' is not one token of this tokenizer (6 tokens)"),
        (["explain", str(lm), "-p", "ab", "explain.topk=3", *out],
         "error: override: unknown config key 'explain.topk' (did you mean 'explain.top_k'?)"),
        (["explain", str(lm), "-p", "ab", "explain.ig_steps=0", *out], "error: explain.ig_steps must be at least 1, got 0"),
        (["explain", str(lm), str(lm), "-p", "ab", *out],
         "error: explain: one model (a checkpoint, run or Hugging Face directory) expected, got 2"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert main(argv) == 2, argv
        assert error_line(capsys) == expected
