"""Tasks end to end on real files: the report (json, md, PNG), classification from predictions, generation
tasks against sacrebleu and a direct transformers greedy decode, and the CLI on the shared benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
import torch
from sklearn.metrics import f1_score
from tokenizers import Tokenizer

from lmforge.config import load_config
from lmforge.eval.evaluate import run_evaluate

SST2_ROWS = [
    ("it 's a charming and often affecting journey . ", "1", "1"),
    ("unflinchingly bleak and desperate ", "0", "0"),
    ("allows us to hope that nolan is poised to embark a major career . ", "1", "0"),
    ("the acting , costumes , music , cinematography and sound are all astounding . ", "1", "1"),
    ("it 's slow -- very , very slow . ", "0", "0"),
    ("a sometimes tedious film . ", "0", "1"),
    ("or doing last year 's taxes with your ex-wife . ", "0", "0"),
]


def write_sst2(tmp_path: Path) -> tuple[Path, Path]:
    data, preds = tmp_path / "dev.tsv", tmp_path / "preds.txt"
    data.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{gold}\n" for s, gold, _ in SST2_ROWS), encoding="utf-8"
    )
    preds.write_text("".join(f"{p}\n" for _, _, p in SST2_ROWS), encoding="utf-8")
    return data, preds


def test_classify_from_predictions_writes_report_and_confusion_png(tmp_path: Path) -> None:
    data, preds = write_sst2(tmp_path)
    cfg = load_config(
        None,
        [
            "eval.tasks=[classify]",
            f"eval.classify.data={data}",
            f"eval.classify.predictions={preds}",
            "eval.classify.text_field=sentence",
        ],
    )
    run = tmp_path / "run"
    report = run_evaluate(cfg, out=run)  # no model needed: the predictions are given
    result = report["tasks"]["classify"]
    gold, pred = [g for _, g, _ in SST2_ROWS], [p for _, _, p in SST2_ROWS]
    assert result["metrics"]["accuracy"] == pytest.approx(5 / 7)
    assert result["metrics"]["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert result["details"]["confusion_matrix"] == [[3, 1], [1, 2]]
    assert [w["gold"] for w in result["worst"]] == ["1", "0"]  # the misclassified rows, in file order
    assert result["worst"][0]["source"].endswith("dev.tsv:4")

    assert json.loads((run / "report.json").read_text())["tasks"]["classify"]["n"] == 7
    md = (run / "report.md").read_text()
    assert "| true \\ predicted | 0 | 1 |" in md and "| 0 | 3 | 1 |" in md and "confusion_classify.png" in md
    assert (run / "confusion_classify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert {o["path"] for o in manifest["outputs"]} >= {"report.json", "report.md", "confusion_classify.png"}


def test_classify_takes_a_predictor_callable(tmp_path: Path) -> None:
    data, _ = write_sst2(tmp_path)
    cfg = load_config(
        None,
        [
            "eval.tasks=[classify]",
            f"eval.classify.data={data}",
            "eval.classify.text_field=sentence",
            "eval.classify.labels=[0, 1]",
            "eval.limit=4",
        ],
    )
    report = run_evaluate(
        cfg, out=tmp_path / "run", predictors={"classify": lambda texts: ["1"] * len(texts)}
    )
    result = report["tasks"]["classify"]
    assert result["n"] == 4 and result["metrics"]["accuracy"] == pytest.approx(3 / 4)
    assert result["details"]["per_class"]["0"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def hf_greedy(model: Any, ids: list[int], tok: Tokenizer, max_new: int, eos: int) -> str:
    """Greedy decoding with transformers, no cache, cut at the first newline."""
    out: list[int] = []
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
        if "\n" in tok.decode(out):
            break
    return tok.decode(out).split("\n")[0].strip()


def test_translation_tasks_bleu_and_greedy_outputs(tmp_path: Path, gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    en = [
        "A man in an orange hat staring at something.",
        "Two dogs play in the snow.",
        "A girl in a karate uniform breaking a stick with a front kick.",
        "People are fixing the roof of a house.",
        "A little girl climbs into a wooden playhouse while her brother watches from the window.",
    ]
    de = [
        "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
        "Zwei Hunde spielen im Schnee.",
        "Ein Mädchen in einem Karateanzug bricht einen Stock mit einem Tritt.",
        "Leute reparieren das Dach eines Hauses.",
        "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
    ]
    m30k = tmp_path / "translation" / "multi30k"
    m30k.mkdir(parents=True)
    (m30k / "test_2016_flickr.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    (m30k / "test_2016_flickr.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    tatoeba = tmp_path / "translation" / "tatoeba_cmn_eng"
    tatoeba.mkdir(parents=True)
    rows = [
        ("Hi.", "嗨。"),
        ("Run.", "你用跑的。"),
        ("I won!", "我赢了。"),
        ("We are going to the park tomorrow.", "我们明天去公园。"),
    ]
    lines = []
    for i, (e, z) in enumerate(rows * 10):  # every 20th row is the test set: rows 0 and 20
        lines.append(f"{e}\t{z}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}\n")
    (tatoeba / "cmn.txt").write_text("".join(lines), encoding="utf-8")

    max_new = 12
    cfg = load_config(
        None,
        [
            f"eval.model={gpt2_dir}",
            "eval.tasks=[multi30k, tatoeba_en_zh]",
            "eval.device=cpu",
            f"eval.data_dir={tmp_path}",
            f"eval.translate.max_new_tokens={max_new}",
            "eval.batch_size=2",
        ],
    )
    run = tmp_path / "run"
    report = run_evaluate(cfg, out=run)

    tok = Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    eos = tok.token_to_id("<|endoftext|>")
    room = 48 - max_new
    expected_truncated = 0
    hyps_direct = []
    for s in en:
        ids = tok.encode(f"English: {s}\nGerman:").ids
        expected_truncated += len(ids) > room
        hyps_direct.append(hf_greedy(model, ids[-room:], tok, max_new, eos))

    m = report["tasks"]["multi30k"]
    hyps = (run / "hypotheses_multi30k.txt").read_text(encoding="utf-8").splitlines()
    assert hyps == hyps_direct
    assert m["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [de]).score)
    assert m["metrics"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [de]).score)
    assert m["details"]["truncated"] == expected_truncated > 0
    assert len(m["worst"]) == len(en) and m["worst"][0]["sentence_bleu"] <= m["worst"][-1]["sentence_bleu"]

    z = report["tasks"]["tatoeba_en_zh"]
    assert z["n"] == 2 and z["details"]["tokenize"] == "zh"
    zh_hyps = (run / "hypotheses_tatoeba_en_zh.txt").read_text(encoding="utf-8").splitlines()
    assert z["metrics"]["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(zh_hyps, [["嗨。", "嗨。"]], tokenize="zh").score
    )


def test_cli_on_shared_benchmarks(tmp_path: Path, gpt2_dir: Path, shared_data: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge.cli",
            "evaluate",
            str(gpt2_dir),
            "--task",
            "wikitext2",
            "--task",
            "lambada",
            "--limit",
            "2",
            "--out",
            str(run),
            "eval.device=cpu",
            f"eval.data_dir={shared_data}",
            "eval.worst_n=1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wikitext2" in proc.stdout and "bits_per_byte" in proc.stdout
    report = json.loads((run / "report.json").read_text())
    wt, lam = report["tasks"]["wikitext2"], report["tasks"]["lambada"]
    assert wt["n"] == 2 and lam["n"] == 2 and report["limit"] == 2
    assert wt["metrics"]["bits_per_byte"] > 0 and wt["details"]["windows"] > 2
    assert wt["worst"][0]["source"].startswith("wiki.test.raw:")
    assert 0 <= lam["metrics"]["accuracy"] <= 1 and len(lam["worst"]) == 1
    assert lam["details"]["truncated"] >= 1  # LAMBADA passages are longer than this model's 48 tokens
    md = (run / "report.md").read_text()
    assert "## wikitext2" in md and "## lambada" in md and "left truncation" in md
