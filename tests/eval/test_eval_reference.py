"""Our evaluation of a Hugging Face directory (loaded through load_model into our GPT) against the same
numbers computed directly with transformers over the same tokens: perplexity and bits per byte with
Hugging Face's sliding-window recipe, LAMBADA log-likelihoods and greedy hits, multiple-choice scores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SENTENCES, corpus_text
from tokenizers import Tokenizer

from lmforge.config import load_config
from lmforge.eval.evaluate import run_evaluate
from lmforge.eval.scoring import rolling_windows

REL = 1e-4
MAX_LENGTH, STRIDE = 40, 16


def hf_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def evaluate(tmp_path: Path, model_dir: Path, *overrides: str) -> dict[str, Any]:
    cfg = load_config(None, [f"eval.model={model_dir}", "eval.device=cpu", "eval.batch_size=4", *overrides])
    return run_evaluate(cfg, out=tmp_path / "run")


def hf_sliding_window_nll(model: Any, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Hugging Face's perplexity guide, verbatim in substance: (total NLL in nats, tokens scored)."""
    seq_len, prev_end, nll_sum, n_tokens = len(ids), 0, 0.0, 0
    input_all = torch.tensor([ids])
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = input_all[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        valid = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * valid
        n_tokens += valid
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, n_tokens


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_perplexity_and_bits_per_byte_match_transformers(tmp_path: Path, flavour: str, request) -> None:
    model_dir: Path = request.getfixturevalue(f"{flavour}_dir")
    docs = [corpus_text(2), "Short one.", " ".join(SENTENCES[::-1])]  # long (many windows), tiny, medium
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    report = evaluate(
        tmp_path,
        model_dir,
        "eval.tasks=[lm]",
        f"eval.lm.files=[{jsonl}]",
        f"eval.max_length={MAX_LENGTH}",
        f"eval.stride={STRIDE}",
    )["tasks"]["lm"]

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    model = hf_model(model_dir)
    nll, tokens = 0.0, 0
    for d in docs:
        n, t = hf_sliding_window_nll(
            model, [eos, *tok.encode(d, add_special_tokens=False).ids], MAX_LENGTH, STRIDE
        )
        nll, tokens = nll + n, tokens + t
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)

    assert report["details"]["tokens"] == tokens
    assert report["details"]["bytes"] == n_bytes
    assert report["details"]["windows"] > 10
    m = report["metrics"]
    assert m["loss"] == pytest.approx(nll / tokens, rel=REL)
    assert m["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=REL)
    assert m["bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=REL)


def test_rolling_windows_score_every_token_once() -> None:
    for n in (2, 5, 40, 41, 97):
        for max_length, stride in ((40, 16), (8, 7), (8, 1)):
            windows = rolling_windows(n, max_length, stride)
            scored = [t for begin, end, k in windows for t in range(end - k, end)]
            assert scored == list(range(1, n)), (n, max_length, stride)
            assert all(end - begin <= max_length and end - k > begin for begin, end, k in windows)


def lambada_reference(model: Any, tok: Tokenizer, text: str, max_length: int) -> tuple[float, bool]:
    """lm-evaluation-harness's loglikelihood for one LAMBADA passage, computed with transformers."""
    context, last = text.rsplit(" ", 1)
    whole = tok.encode(context + " " + last, add_special_tokens=False).ids
    ctx = tok.encode(context, add_special_tokens=False).ids
    cont = whole[len(ctx) :]
    inp = (ctx + cont)[-(max_length + 1) :][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0, -len(cont) :].float()
    logprobs = torch.log_softmax(logits, -1)
    target = torch.tensor(cont)
    ll = float(logprobs.gather(1, target[:, None]).sum())
    return ll, bool((logits.argmax(-1) == target).all())


def greedy_hits(model_dir: Path, n: int) -> list[str]:
    """Passages ending in the word the model predicts (one " word" token), so accuracy is not trivially 0."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = hf_model(model_dir)
    found = []
    for a in SENTENCES:
        for b in SENTENCES:
            context = f"{a} {b[: len(b) // 2].rstrip()}"
            ids = tok.encode(context, add_special_tokens=False).ids[-32:]  # as eval.max_length=32 sees it
            with torch.no_grad():
                best = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            word = tok.decode([best])
            if word.startswith(" ") and word[1:].isalpha() and tok.encode(word).ids == [best]:
                found.append(context + word)
                if len(found) == n:
                    return found
    return found


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_lambada_loglikelihoods_match_transformers(tmp_path: Path, flavour: str, request) -> None:
    model_dir: Path = request.getfixturevalue(f"{flavour}_dir")
    english = [s for s in SENTENCES if s.isascii()]
    texts = [
        f"{a} {b} {c}" for a, b, c in zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3], english[2:] + english)
    ]
    texts += greedy_hits(model_dir, 4)  # passages whose last word is the model's greedy choice
    data = tmp_path / "lm-eval" / "lambada" / "lambada_test.jsonl"  # where the built-in task looks
    data.parent.mkdir(parents=True)
    data.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    max_length = 32  # most passages are longer: left truncation is exercised
    report = evaluate(
        tmp_path,
        model_dir,
        "eval.tasks=[lambada]",
        f"eval.data_dir={tmp_path}",
        f"eval.max_length={max_length}",
        "eval.worst_n=100",
    )
    result = report["tasks"]["lambada"]

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = hf_model(model_dir)
    refs = [lambada_reference(model, tok, t, max_length) for t in texts]
    lls = [ll for ll, _ in refs]
    assert result["n"] == len(texts)
    assert result["metrics"]["accuracy"] == sum(hit for _, hit in refs) / len(refs)
    assert 0 < result["metrics"]["accuracy"] < 1
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=REL)
    ours = sorted(w["loss"] for w in result["worst"])
    assert ours == pytest.approx(sorted(-ll for ll in lls), rel=REL)
    assert result["details"]["truncated"] > 0
    assert "left truncation" in result["notes"][0]


def test_multiple_choice_matches_transformers(tmp_path: Path, gpt2_dir: Path) -> None:
    questions = [
        {
            "question": "Where does the river flow?",
            "options": ["to the sea", "into the sky", "up the hill"],
            "answer": 0,
        },
        {
            "question": "Who is playing in the park?",
            "options": ["two young children", "the castle"],
            "answer": 0,
        },
        {
            "question": "What did the man wear?",
            "options": ["a hat", "a blue shirt", "nothing at all today"],
            "answer": "a blue shirt",
        },
        {"question": "Was the weather fine?", "options": ["yes", "no"], "answer": 1},
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    spec = tmp_path / "qa.yaml"
    spec.write_text(
        'name: qa\ndata: qa.jsonl\ncontext: "Q: {question}\\nA:"\nchoices: options\ngold: answer\n'
    )
    result = evaluate(tmp_path, gpt2_dir, f"eval.tasks=[{spec}]", "eval.worst_n=10")["tasks"]["qa"]

    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    model = hf_model(gpt2_dir)
    acc = acc_norm = 0
    margins = []
    for q in questions:
        context = f"Q: {q['question']}\nA:"
        lls = []
        for choice in q["options"]:
            ctx = tok.encode(context, add_special_tokens=False).ids
            cont = tok.encode(context + " " + choice, add_special_tokens=False).ids[len(ctx) :]
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont])[:, :-1]).logits[0, -len(cont) :]
            lls.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None]).sum()))
        gold = q["answer"] if isinstance(q["answer"], int) else q["options"].index(q["answer"])
        best = max(range(len(lls)), key=lambda i: lls[i])
        acc += best == gold
        if best != gold:
            margins.append(lls[best] - lls[gold])
        acc_norm += max(range(len(lls)), key=lambda i: lls[i] / len(q["options"][i])) == gold
    assert result["metrics"]["acc"] == acc / len(questions)
    assert result["metrics"]["acc_norm"] == acc_norm / len(questions)
    assert sorted(w["margin"] for w in result["worst"]) == pytest.approx(sorted(margins), rel=REL)
