"""`lmforge tokenizer train`: byte-level BPE and char-level tokenizers on the shared corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmforge.tokenizer import load_tokenizer, read_tokenizer_config
from lmforge.tokenizer.chat_template import ChatTokens, render_chat
from lmforge.tokenizer.encode import iter_pieces
from lmforge.tokenizer.train import jieba_words, run_train

SPECIALS = [
    "<|bos|>",
    "<|endoftext|>",
    "<|pad|>",
    "<|unk|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


def test_bpe_from_cli_on_prepared_data(cli, prepared, corpora, tmp_path: Path) -> None:
    data = prepared(train=[corpora["tinyshakespeare"][0][:100_000], corpora["hongloumeng"][0][:30_000]])
    code, last = cli("tokenizer", "train", data, "tokenizer.vocab_size=600", "--out", tmp_path / "tok")
    assert code == 0, last
    out = tmp_path / "tok"
    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == 600
    assert [tok.token_to_id(t) for t in SPECIALS] == list(range(len(SPECIALS)))  # specials first
    # No post-processor: encoding adds no bos/eos.
    assert (
        tok.encode("hello", add_special_tokens=True).ids == tok.encode("hello", add_special_tokens=False).ids
    )
    assert tok.encode("\n").ids != [] and tok.token_to_id("<|bos|>") not in tok.encode("To be").ids
    spec = json.loads((out / "tokenizer.json").read_text())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["decoder"]["type"] == "ByteLevel" and spec["post_processor"] is None
    assert all(t["special"] for t in spec["added_tokens"]) and len(spec["added_tokens"]) == len(SPECIALS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "tokenizer"
    assert manifest["inputs"][0]["path"].endswith("train.jsonl.zst")
    assert {Path(o["path"]).name for o in manifest["outputs"]} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert manifest["tokenizer"]["vocab_size"] == 600 and manifest["tokenizer"]["documents"] == 2


def test_transformers_loads_it(bpe_dir: Path, corpora) -> None:
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(bpe_dir)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(bpe_dir / "tokenizer.json"))
    ours = load_tokenizer(bpe_dir)
    assert (auto.bos_token, auto.eos_token, auto.pad_token, auto.unk_token) == tuple(SPECIALS[:4])
    assert auto.eos_token_id == ours.token_to_id("<|endoftext|>") == 1
    text = corpora["alpaca_zh"][0] + "\n  To be, or not to be , that is the question .  \n"
    ids = ours.encode(text).ids
    assert auto(text)["input_ids"] == ids == fast(text)["input_ids"]
    assert auto.decode(ids) == text  # no clean-up of spaces before punctuation

    messages = [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ]
    chat = ChatTokens.from_list(SPECIALS[4:])
    for prompt in (False, True):
        rendered = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert rendered == render_chat(messages, chat, add_generation_prompt=prompt)
    assert render_chat(messages[1:2], chat, True) == "<|user|>\nHi!<|end|>\n<|assistant|>\n"
    ids = ours.encode(render_chat(messages, chat)).ids
    assert ids.count(ours.token_to_id("<|end|>")) == 3  # chat tokens are single special tokens
    assert read_tokenizer_config(bpe_dir)["model_max_length"] == 256  # model.block_size by default


def test_round_trip_every_corpus(bpe_dir: Path, corpora) -> None:
    tok = load_tokenizer(bpe_dir)
    for name, texts in corpora.items():
        # Long documents are encoded in pieces, as the encode stage does (tested equal to the whole).
        ids = [[i for e in tok.encode_batch_fast(list(iter_pieces([t]))) for i in e.ids] for t in texts]
        decoded = tok.decode_batch(ids, skip_special_tokens=False)
        bad = [i for i, (a, b) in enumerate(zip(decoded, texts)) if a != b]
        assert not bad, f"{name}: document {bad[0]} does not round-trip"
        assert tok.token_to_id("<|unk|>") not in {i for d in ids for i in d}, name


def test_english_only_bpe_still_handles_chinese(tmp_path: Path, corpora, make_config) -> None:
    txt = tmp_path / "shakespeare.txt"
    txt.write_text(corpora["tinyshakespeare"][0][:50_000], encoding="utf-8")
    out = run_train(make_config(inputs=[str(txt)], vocab_size=400), out=tmp_path / "tok")
    tok = load_tokenizer(out)
    text = corpora["hongloumeng"][0][:5000] + "🙂 é"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_char_level_shakespeare(tmp_path: Path, shared_data: Path, corpora, make_config) -> None:
    out = run_train(
        make_config(inputs=[str(shared_data / "tinyshakespeare/input.txt")], kind="char"),
        out=tmp_path / "tok",
    )
    tok = load_tokenizer(out)
    text = corpora["tinyshakespeare"][0]
    chars = sorted(set(text))
    assert len(chars) == 65 and tok.get_vocab_size() == 65 + len(SPECIALS)
    assert [tok.id_to_token(i) for i in range(tok.get_vocab_size())] == SPECIALS + chars
    ids = tok.encode(text).ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    z, q, newline = (tok.token_to_id(c) for c in "zq\n")
    assert tok.encode("zq<|endoftext|>\n").ids == [z, q, 1, newline]
    assert tok.encode("€").ids == [tok.token_to_id("<|unk|>")]
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto(text[:2000])["input_ids"] == ids[:2000] and auto.decode(ids[:2000]) == text[:2000]


def test_char_level_vocab_cap_keeps_most_frequent(tmp_path: Path, make_config) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("aaaa bbb cc d", encoding="utf-8")
    tok = load_tokenizer(
        run_train(make_config(inputs=[str(txt)], kind="char", vocab_size=11), out=tmp_path / "t")
    )
    assert [tok.id_to_token(i) for i in range(8, 11)] == [" ", "a", "b"]


def test_jieba_merges_stay_inside_words(tmp_path: Path, corpora, make_config) -> None:
    pytest.importorskip("jieba")
    text = corpora["hongloumeng"][0][:20_000]
    txt = tmp_path / "hlm.txt"
    txt.write_text(text, encoding="utf-8")
    plain = load_tokenizer(run_train(make_config(inputs=[str(txt)], vocab_size=800), out=tmp_path / "plain"))
    seg = load_tokenizer(
        run_train(make_config(inputs=[str(txt)], vocab_size=800, jieba=True), out=tmp_path / "j")
    )
    words = "\n".join(jieba_words(text))

    def crossing(tok: Tokenizer) -> list[str]:
        learned = [tok.decode([i]) for i in range(len(SPECIALS), tok.get_vocab_size())]
        han = [t for t in learned if len(t) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in t)]
        return [t for t in han if t not in words]  # a Chinese token that is no part of any jieba word

    assert crossing(seg) == []
    assert crossing(plain)  # without jieba, merges do cross word boundaries
    spec = json.loads((tmp_path / "j" / "tokenizer.json").read_text())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel"  # the saved tokenizer stays standard
    assert seg.decode(seg.encode(text).ids) == text
    assert jieba_words("hello world 你好世界") == ["hello", " world", " 你好", "世界"]


def test_jsonl_input_and_max_train_mb(tmp_path: Path, corpora, make_config) -> None:
    jsonl = tmp_path / "docs.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for text in corpora["chnsenticorp"][:1500]:
            f.write(json.dumps({"text": text, "label": 1}, ensure_ascii=False) + "\n")
    out = run_train(make_config(inputs=[str(jsonl)], vocab_size=400, max_train_mb=0.1), out=tmp_path / "t")
    stats = json.loads((out / "manifest.json").read_text())["tokenizer"]
    assert 99_000 < stats["train_bytes"] <= 100_000
    assert stats["documents"] < 1500


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-train-split", "no train split"),
        ("no-text-key", "record has no 'text'"),
        ("empty-text", "no training text"),
        ("missing-dir", "input not found"),
        ("bad-jsonl", "docs.jsonl:2: record has no 'text'"),
        ("vocab-too-small", "tokenizer.vocab_size=200"),
    ],
)
def test_bad_input_is_one_line_error(case: str, message: str, cli, prepared, tmp_path: Path) -> None:
    args: list[str | Path] = []
    if case == "no-train-split":
        args = [prepared(val=["some text"])]
    elif case == "no-text-key":
        from lmforge.data.documents import JsonlZstWriter

        data = tmp_path / "data"
        data.mkdir()
        with JsonlZstWriter(data / "train.jsonl.zst") as w:
            w.write({"content": "x"})
        args = [data]
    elif case == "empty-text":
        args = [prepared(train=["", ""])]
    elif case == "missing-dir":
        args = [tmp_path / "nope"]
    elif case == "bad-jsonl":
        (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
        args = [tmp_path / "docs.jsonl"]
    elif case == "vocab-too-small":
        args = [prepared(train=["text"]), "tokenizer.vocab_size=200"]
    code, last = cli("tokenizer", "train", *args, "--out", tmp_path / "out")
    assert code == 2
    assert last.startswith("error: ") and message in last, last
    if case in ("no-train-split", "missing-dir", "no-text-key"):
        assert str(args[0]) in last  # names the path
