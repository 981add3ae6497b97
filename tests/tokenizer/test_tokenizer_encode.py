"""`lmforge tokenizer encode`: prepared splits into token shards + meta.json."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.encode import iter_pieces, load_split, read_meta, run_encode
from lmforge.tokenizer.train import char_tokenizer

EOS = "<|endoftext|>"


def test_pieces_encode_like_the_whole_document(bpe_dir: Path, corpora) -> None:
    tok = load_tokenizer(bpe_dir)
    for text in (corpora["tinyshakespeare"][0], corpora["hongloumeng"][0]):
        pieces = list(iter_pieces([text]))
        assert len(pieces) > 1 and "".join(pieces) == text
        whole = tok.encode(text).ids
        assert [i for e in tok.encode_batch_fast(pieces) for i in e.ids] == whole
    # Streaming blocks of any size gives the same pieces as the whole text at once.
    text = corpora["tinyshakespeare"][0][:300_000]
    blocks = [text[i : i + 7777] for i in range(0, len(text), 7777)]
    assert list(iter_pieces(blocks)) == list(iter_pieces([text]))


def test_pieces_on_random_whitespace_soup(bpe_dir: Path) -> None:
    """Cuts fall only where GPT-2's pre-tokenizer splits anyway, whatever the whitespace around them."""
    tok = load_tokenizer(bpe_dir)
    alphabet = ["a", "b", " ", "  ", "\n", "\n\n", "\r\n", "\t", "'", "s", "'ll", "。", "红", "1", "\x1c", "\u3000",
                "\x85", "\xa0", "é", "!", EOS, " \n", "🙂"]  # fmt: skip
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        pieces = list(iter_pieces([text], piece_chars=rng.randint(1, 6)))
        assert "".join(pieces) == text
        assert [i for p in pieces for i in tok.encode(p).ids] == tok.encode(text).ids, repr(text)
    # A cut right after a newline would be wrong: "\n\n" is one pre-token at the end of a text, two before "B".
    pre = tok.pre_tokenizer
    assert pre is not None
    words = lambda text: [w for w, _ in pre.pre_tokenize_str(text)]  # noqa: E731
    assert words("a\n\n") + words("B") != words("a\n\nB")
    assert list(iter_pieces(["a\n\nB"], piece_chars=1)) == ["a", "\n\nB"]


def test_encode_cli_writes_shards_and_meta(cli, bpe_dir: Path, prepared, corpora, tmp_path: Path) -> None:
    shakespeare = corpora["tinyshakespeare"][0]
    docs = {
        "train": [shakespeare[:300_000], *corpora["chnsenticorp"][:300], corpora["xiyouji"][0][:50_000]],
        "val": [shakespeare[-100_000:], *corpora["alpaca_zh"][:50]],
        "test": [*corpora["sst2"][:100], ""],
    }
    data = prepared(**docs)
    out = tmp_path / "shards"
    code, last = cli("tokenizer", "encode", data, "--tokenizer", bpe_dir, "--out", out)
    assert code == 0, last
    assert re.search(r"encoded [\d,]+ tokens from [\d.]+ MB in [\d.]+s \([\d.]+ MB/s\)", last), last

    tok = load_tokenizer(bpe_dir)
    meta = read_meta(out)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 1000
    assert (meta["eos_id"], meta["bos_id"], meta["pad_id"], meta["unk_id"]) == (1, 0, 2, 3)
    assert meta["tokenizer_sha256"] == hashlib.sha256((bpe_dir / "tokenizer.json").read_bytes()).hexdigest()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (bpe_dir / name).read_bytes()
    assert (out / meta["tokenizer_path"]).is_file()
    for split, texts in docs.items():
        info = meta["splits"][split]
        assert [f["name"] for f in info["files"]] == [f"{split}.bin"]
        raw = (out / f"{split}.bin").read_bytes()
        assert info["files"][0]["sha256"] == hashlib.sha256(raw).hexdigest()
        tokens = np.frombuffer(raw, dtype="<u2")
        assert len(tokens) == info["tokens"] == info["files"][0]["tokens"]
        assert (info["documents"], info["chars"]) == (len(texts), sum(map(len, texts)))
        assert info["bytes"] == sum(len(t.encode()) for t in texts)
        # An eos after every document, and the documents decode back exactly.
        assert tokens[-1] == 1 and int((tokens == 1).sum()) == len(texts)
        expected = [i for e in tok.encode_batch_fast(texts) for i in [*e.ids, 1]]
        assert tokens.tolist() == expected
        assert tok.decode(tokens.tolist(), skip_special_tokens=False) == "".join(t + EOS for t in texts)
        assert np.array_equal(load_split(out, split), tokens)
    assert meta["tokens"] == sum(s["tokens"] for s in meta["splits"].values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "shards"
    assert {Path(o["path"]).name for o in manifest["outputs"]} >= {
        "train.bin",
        "val.bin",
        "test.bin",
        "meta.json",
    }
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]

    pytest.importorskip("transformers").AutoTokenizer.from_pretrained(out)  # the shard dir is self-describing


def test_shard_rollover_and_stale_files(
    bpe_dir: Path, prepared, corpora, make_config, tmp_path: Path
) -> None:
    data = prepared(train=corpora["sst2"][:400])
    out = tmp_path / "shards"
    cfg = make_config(path=str(bpe_dir / "tokenizer.json"))
    run_encode(cfg, data_dir=data, out=out)
    whole = (out / "train.bin").read_bytes()

    cfg.tokenizer.shard_max_tokens = 1000
    run_encode(cfg, data_dir=data, out=out)
    meta = read_meta(out)
    files = meta["splits"]["train"]["files"]
    n = len(whole) // 2
    assert [f["name"] for f in files] == [f"train_{i:03d}.bin" for i in range(-(-n // 1000))]
    assert [f["tokens"] for f in files[:-1]] == [1000] * (len(files) - 1)
    assert b"".join((out / f["name"]).read_bytes() for f in files) == whole
    assert not (out / "train.bin").exists()  # the old single shard is gone
    assert np.array_equal(load_split(out, "train"), np.frombuffer(whole, dtype="<u2"))

    cfg.tokenizer.shard_max_tokens = 10**9
    run_encode(cfg, data_dir=data, out=out)
    assert sorted(p.name for p in out.glob("train*.bin")) == ["train.bin"]


def test_uint32_for_large_vocabularies(prepared, make_config, tmp_path: Path) -> None:
    specials = ["<|bos|>", EOS, "<|pad|>", "<|unk|>"]
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 72_000) if not (0xD800 <= c < 0xE000 or chr(c).isspace())]
    tok = char_tokenizer(chars, specials, "<|unk|>")
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    text = chars[-1] + chars[0] + chars[-2]
    data = prepared(train=[text, text])
    out = run_encode(make_config(path=str(tmp_path / "tok")), data_dir=data, out=tmp_path / "shards")
    meta = read_meta(out)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] > 65536
    tokens = np.fromfile(out / "train.bin", dtype="<u4")
    ids = [tok.token_to_id(c) for c in text]
    assert max(ids) >= 65536 and tokens.tolist() == [*ids, 1, *ids, 1]


def _bad_tokenizer(tmp_path: Path) -> Path:
    bad = tmp_path / "bad" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    return bad


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-tokenizer", "tokenizer not found"),
        ("invalid-tokenizer", "not a valid tokenizer.json"),
        ("missing-data-dir", "data directory not found"),
        ("no-splits", "no prepared splits"),
        ("no-text", "train.jsonl.zst:2: record has no 'text'"),
    ],
)
def test_bad_input_is_one_line_error(case, message, cli, bpe_dir: Path, prepared, tmp_path: Path) -> None:
    tokenizer: Path = bpe_dir
    data = prepared(train=["hello"])
    if case == "missing-tokenizer":
        tokenizer = tmp_path / "nowhere" / "tokenizer.json"
    elif case == "invalid-tokenizer":
        tokenizer = _bad_tokenizer(tmp_path)
    elif case == "missing-data-dir":
        data = tmp_path / "no-such-dir"
    elif case == "no-splits":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no-text":
        from lmforge.data.documents import JsonlZstWriter

        with JsonlZstWriter(data / "train.jsonl.zst") as w:
            w.write({"text": "fine"})
            w.write({"txt": "typo"})
    code, last = cli("tokenizer", "encode", data, "--tokenizer", tokenizer, "--out", tmp_path / "out")
    assert code == 2
    assert last.startswith("error: ") and message in last, last
    named = {"missing-tokenizer": tokenizer, "invalid-tokenizer": tokenizer, "missing-data-dir": data}
    if case in named:
        assert str(named[case]) in last


def test_cli_subprocess_exit_status(tmp_path: Path, prepared) -> None:
    """The installed entry point: bad input exits 2 with one `error:` line and no traceback."""
    data = prepared(train=["hello"])
    bad = _bad_tokenizer(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "tokenizer", "encode", str(data), "--tokenizer", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {bad}: not a valid tokenizer.json")
