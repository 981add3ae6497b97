"""`lmforge prepare` end to end through the CLI: real data, outputs, the report and the printed table."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

from data_helpers import records, report

DISTINCT = [
    "The committee met on Tuesday to discuss the budget for the coming year and the new library.",
    "A storm blew in from the west overnight, knocking down fences and flooding the lower fields.",
    "Her grandmother kept bees behind the barn and sold the honey at the Saturday market in town.",
    "The old railway bridge will be closed for repairs until the end of the summer, officials said.",
    "Students in the chemistry class measured how quickly salt dissolves in water of different temperatures.",
    "He learned to play the violin at the age of forty and now performs with a small local orchestra.",
    "Fishing boats returned to the harbour early because the forecast warned of strong winds after noon.",
    "The museum opened a new exhibition of maps drawn by sailors who explored the northern coast.",
]
EN = ("The committee met on Tuesday to discuss the budget for the coming year, and several members "
      "raised concerns about the cost of the new library building near the river.")


def test_tiny_shakespeare_gets_nanogpts_split(cli: Callable, shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "tinyshakespeare" / "input.txt"
    rc, out, err = cli("prepare", source, "--out", tmp_path / "p")
    assert rc == 0, err
    text = source.read_text(encoding="utf-8")
    n = len(text)
    train, val = records(tmp_path / "p", "train"), records(tmp_path / "p", "val")
    assert [r["text"] for r in train] == [text[: int(n * 0.9)]]
    assert [r["text"] for r in val] == [text[int(n * 0.9):]]
    assert train[0]["lang"] == "en" and train[0]["source"] == f"{source}:1"
    assert not (tmp_path / "p" / "test.jsonl.zst").exists()  # test ratio is 0
    # The table on stdout: every step with documents and characters in and out.
    for step in ("read", "normalize", "language", "quality", "pii", "exact_dedup", "near_dedup", "split"):
        assert f"\n{step} " in "\n" + out
    assert "1,115,394" in out
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert {Path(o["path"]).name for o in manifest["outputs"]} == {"train.jsonl.zst", "val.jsonl.zst", "report.json"}
    assert manifest["inputs"][0]["path"] == str(source)


def test_chinese_novels_kept_by_default(cli: Callable, shared_data: Path, tmp_path: Path) -> None:
    rc, _out, err = cli("prepare", shared_data / "chinese-text", "--out", tmp_path / "p")
    assert rc == 0, err
    rep = report(tmp_path / "p")
    assert rep["docs_in"] == 2 and rep["steps"][-1]["docs_in"] == 2  # README.md skipped, both novels kept
    assert rep["chars_out"] > 0.98 * rep["chars_in"]
    assert {r["lang"] for r in records(tmp_path / "p", "train")} == {"zh"}
    assert rep["splits"]["val"]["docs"] == 2


def test_sst2_mostly_survives(cli: Callable, shared_data: Path, tmp_path: Path) -> None:
    rc, _, err = cli("prepare", shared_data / "sentiment" / "sst2" / "train.tsv", "data.reader.text_field=sentence",
                     "--out", tmp_path / "p")
    assert rc == 0, err
    rep = report(tmp_path / "p")
    quality = next(s for s in rep["steps"] if s["name"] == "quality")
    assert quality["docs_out"] > 0.98 * quality["docs_in"]
    assert rep["docs_out"] > 0.6 * rep["docs_in"]  # near-dedup drops SST-2's repeated sub-phrases, not more
    assert {r["label"] for r in records(tmp_path / "p", "train")} == {0, 1}


def test_report_counts_are_consistent_and_examples_kept(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(DISTINCT)]
    rows += [{"text": rows[0]["text"]}, {"text": "..."}, {"text": "Lorem ipsum dolor sit amet, consectetur elit."}]
    rows += [{"text": "Contact me at jane@example.org or 555-123-4567 about the tickets for the concert."}]
    rows += [{"text": rows[1]["text"].replace("overnight", "over night")}]
    f.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "p"
    rc, stdout, err = cli("prepare", f, "data.split.val=0.2", "data.split.test=0.2", "--out", out)
    assert rc == 0, err
    rep = report(out)
    steps = rep["steps"]
    assert steps[0]["name"] == "read" and steps[0]["docs_out"] == len(rows)
    for before, after in itertools.pairwise(steps):
        assert before["docs_out"] == after["docs_in"] and before["chars_out"] == after["chars_in"]
        assert after["docs_in"] - after["removed"] == after["docs_out"] or after["name"] == "split"
    by_name = {s["name"]: s for s in steps}
    assert by_name["quality"]["removed_by"] == {"max_symbol_word_ratio": 1, "lorem_ipsum": 1}
    assert by_name["exact_dedup"]["removed"] == 1 and by_name["near_dedup"]["removed"] == 1
    assert by_name["pii"]["counters"]["email"] == 1 and by_name["pii"]["counters"]["phone"] == 1
    assert by_name["quality"]["examples"][0]["text"] == "..."
    written = [r for s in ("train", "val", "test") for r in records(out, s)]
    assert len(written) == rep["docs_out"] == sum(v["docs"] for v in rep["splits"].values()) == 9
    assert len({r["text"] for r in written}) == 9  # disjoint splits, no duplicates
    assert any("<EMAIL>" in r["text"] and "<PHONE>" in r["text"] for r in written)
    assert all(r["source"].startswith(f"{f}:") and "lang" in r for r in written)
    assert "removed by quality:" in stdout and "lorem_ipsum" in stdout


def test_split_is_deterministic_across_runs(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_text("\n".join(f"Line {i}: {DISTINCT[i % 8]}" for i in range(300)), encoding="utf-8")
    results = []
    for name in ("a", "b"):
        rc, _, err = cli("prepare", f, "data.reader.txt_mode=line", "data.split.test=0.1", "data.dedup.near=false",
                         "--out", tmp_path / name)
        assert rc == 0, err
        results.append({s: [r["source"] for r in records(tmp_path / name, s)] for s in ("train", "val", "test")})
    assert results[0] == results[1]
    sets = [set(v) for v in results[0].values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 300 and all(sets)


def test_language_keep_list(cli: Callable, tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    zh = "此开卷第一回也。作者自云：因曾历过一番梦幻之后，故将真事隐去，而借通灵之说，撰此石头记一书也。"
    f.write_text(json.dumps({"text": EN}) + "\n" + json.dumps({"text": zh}) + "\n", encoding="utf-8")
    rc, _, err = cli("prepare", f, "data.language.keep=[zh]", "data.split.val=0", "--out", tmp_path / "p")
    assert rc == 0, err
    assert [r["text"] for r in records(tmp_path / "p", "train")] == [zh]
    assert not (tmp_path / "p" / "val.jsonl.zst").exists()


def test_instruction_json_array(cli: Callable, shared_data: Path, tmp_path: Path) -> None:
    rc, _, err = cli("prepare", shared_data / "instructions" / "alpaca_5000.json", "--out", tmp_path / "p")
    assert rc == 0, err
    rows = records(tmp_path / "p", "train")
    assert len(rows) > 3500
    assert all({"instruction", "input", "output", "text", "source"} <= r.keys() for r in rows)
