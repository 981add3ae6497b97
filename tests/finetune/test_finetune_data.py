"""SFT examples, masks and packing; classification losses and class weights (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import FinetuneConfig, load_config
from lmforge.finetune import sft
from lmforge.finetune.batching import RowSampler
from lmforge.finetune.classify import ClassifierModel, class_weights, focal_loss
from lmforge.finetune.records import Record, load_splits, read_records
from lmforge.infer.load import load_model
from lmforge.model.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def loaded(base: Path):
    return load_model(base)


def renderer(loaded) -> sft.ChatRenderer:
    return sft.ChatRenderer.for_tokenizer(loaded.tokenizer, loaded.tokenizer_config)


def test_prompt_masked_exactly_and_padding_ignored(loaded) -> None:
    tok, fcfg = loaded.tokenizer, FinetuneConfig()
    records = [
        Record({"instruction": "Say hi", "input": "", "output": "hi there"}, "a.jsonl:1"),
        Record({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                             {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
                             {"role": "assistant", "content": "4"}]}, "a.jsonl:2"),
    ]
    examples, stats = sft.build_sft_examples(records, fcfg, renderer(loaded), tok, max_length=200)
    assert stats.examples == 2 and stats.truncated == 0
    first = examples[0]
    learnt = [i for i, t in enumerate(first.labels) if t != sft.IGNORE_INDEX]
    # The prompt (everything up to and including "<|assistant|>\n") is masked, the reply and its end learnt.
    assert tok.decode(first.ids[: learnt[0]], skip_special_tokens=False) == "<|user|>\nSay hi<|end|>\n<|assistant|>\n"
    assert tok.decode([first.ids[i] for i in learnt], skip_special_tokens=False) == "hi there<|end|>\n"
    assert learnt == list(range(learnt[0], len(first.ids)))
    # Multi-turn: both assistant replies learnt, nothing else.
    chat = examples[1]
    text = tok.decode([t for t in chat.labels if t != sft.IGNORE_INDEX], skip_special_tokens=False)
    assert text == "2<|end|>\n4<|end|>\n"
    # A padded batch: targets are the shifted labels, -100 on the prompt and on the padding.
    x, y = sft.collate([sft.Row([first]), sft.Row([chat])], pad_id=0, packed=False)
    assert x.shape == y.shape == (2, max(len(first.ids), len(chat.ids)) - 1)
    assert y[0].tolist() == first.labels[1:] + [-100] * (x.shape[1] - len(first.ids) + 1)
    assert (y[0, len(first.ids) - 1 :] == -100).all()


def test_truncation_is_counted_and_empty_examples_dropped(loaded) -> None:
    records = [Record({"instruction": "x" * 50, "output": "yes"}, "f:1"),
               Record({"instruction": "Repeat", "output": "a" * 40}, "f:2")]  # fmt: skip
    examples, stats = sft.build_sft_examples(records, FinetuneConfig(), renderer(loaded), loaded.tokenizer, 30)
    assert stats.truncated == 2 and stats.dropped == 1 and stats.examples == 1
    assert len(examples[0].ids) == 31


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_packed_example_computes_as_if_alone(flavour: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32, flavour=flavour)).eval()
    a = sft.SFTExample(list(range(1, 10)), [-100] * 4 + list(range(5, 10)))
    b = sft.SFTExample(list(range(20, 33)), [-100] * 6 + list(range(26, 33)))
    x, y, extra = sft.collate([sft.Row([a, b])], pad_id=0, packed=True)
    assert extra["segment_ids"][0].tolist() == [1] * 8 + [2] * 12
    assert y[0].tolist() == a.targets + b.targets
    with torch.no_grad():
        packed, _ = model(x, **extra)
        alone_a, _ = model(torch.tensor([a.inputs]))
        alone_b, _ = model(torch.tensor([b.inputs]))
        unmasked, _ = model(x)
    torch.testing.assert_close(packed[0, :8], alone_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[0, 8:], alone_b[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[0, 8:], alone_b[0], atol=1e-3)  # without segments, b would see a


def test_packing_fills_rows_without_overflow() -> None:
    examples = [sft.SFTExample([1] * n, [1] * n) for n in (5, 9, 3, 7, 4, 11, 2)]
    rows = sft.pack(examples, max_length=12, seed=0)
    assert sorted(len(e.ids) for r in rows for e in r.examples) == sorted(len(e.ids) for e in examples)
    assert all(r.length <= 12 for r in rows) and len(rows) < len(examples)


def test_focal_loss_is_cross_entropy_at_gamma_zero() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 3), torch.randint(0, 3, (16,))
    w = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets))
    torch.testing.assert_close(focal_loss(logits, targets, 0.0, w), F.cross_entropy(logits, targets, weight=w))
    assert focal_loss(logits, targets, 2.0) < F.cross_entropy(logits, targets)


def test_class_weights() -> None:
    ids = [0, 0, 0, 1]  # 3 vs 1: balanced = n / (k * count)
    assert class_weights(ids, 2, "balanced") == pytest.approx([4 / 6, 4 / 2])
    assert class_weights(ids, 2, [1, 3]) == [1.0, 3.0]
    assert class_weights(ids, 2, None) is None
    with pytest.raises(Exception, match="class 'c' has no training examples"):
        class_weights(ids, 3, "balanced", ["a", "b", "c"])
    with pytest.raises(Exception, match="3 values for 2 classes"):
        class_weights(ids, 2, [1, 2, 3])


def test_classifier_pools_last_real_token_and_mean() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    last, mean = ClassifierModel(gpt, 2, "last"), ClassifierModel(gpt, 2, "mean")
    mean.head.load_state_dict(last.head.state_dict())
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits, _ = last(ids, attention_mask=mask)
        alone, _ = last(ids[:1, :3])
        hidden = gpt.forward_hidden(ids[:1, :3])
        mean_logits, _ = mean(ids, attention_mask=mask)
    torch.testing.assert_close(logits[0], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_logits[0], mean.head(hidden.mean(1))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "concat"])
def test_classifier_max_and_concat_pooling_ignore_padding(pooling: str) -> None:
    """max: the largest value of each feature over the real tokens; concat: [last, max, mean] into a 3C head.
    A row padded on either side scores as the same text alone, so padding never wins the max."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    model = ClassifierModel(gpt, 2, pooling)
    assert model.head.in_features == (48 if pooling == "concat" else 16)
    text = torch.tensor([[3, 4, 5]])
    ids = torch.tensor([[3, 4, 5, 0, 0], [0, 0, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        hidden = gpt.forward_hidden(text)[0]
        logits, _ = model(ids, attention_mask=mask)
        alone, _ = model(text)
    pooled = hidden.amax(0) if pooling == "max" else torch.cat([hidden[-1], hidden.amax(0), hidden.mean(0)])
    expected = model.head(pooled)
    for row in logits:
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[0], expected, rtol=1e-5, atol=1e-5)


def test_classifier_auxiliary_lm_loss_in_training_only() -> None:
    """lm_loss_weight w: training loss = classification loss + w x the GPT's own next-token loss on the real
    tokens (padding and the position after the last real token ignored); evaluation: classification alone."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    plain, aux = ClassifierModel(gpt, 2, "last"), ClassifierModel(gpt, 2, "last", lm_loss_weight=0.5)
    aux.head.load_state_dict(plain.head.state_dict())
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        _, cls_loss = plain.train()(ids, labels, mask)
        _, total = aux.train()(ids, labels, mask)
        _, evaluated = aux.eval()(ids, labels, mask)
        # The LM loss row by row, unpadded, through the GPT's own forward: 2 + 4 predicted tokens.
        _, lm0 = gpt(ids[:1, :2], ids[:1, 1:3])
        _, lm1 = gpt(ids[1:, :4], ids[1:, 1:5])
    expected_lm = (2 * lm0 + 4 * lm1) / 6
    torch.testing.assert_close(total, cls_loss + 0.5 * expected_lm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluated, cls_loss, rtol=1e-6, atol=1e-6)
    # group_by_length can batch one-token texts together: nothing to predict adds nothing (not NaN).
    one_token = torch.tensor([[3, 0], [4, 0]]), torch.tensor([[1, 0], [1, 0]])
    with torch.no_grad():
        _, short_cls = plain.train()(one_token[0], labels, one_token[1])
        _, short_total = aux.train()(one_token[0], labels, one_token[1])
    torch.testing.assert_close(short_total, short_cls)


def test_records_from_files_and_splits(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}]')
    (tmp_path / "b.tsv").write_text("sentence\tlabel\nit is \"good\tx\n\nbad\ty\n")
    got = read_records(tmp_path / "a.json")
    assert [r.where for r in got] == [f"{tmp_path / 'a.json'}:1[0]", f"{tmp_path / 'a.json'}:2[1]"]
    rows = read_records(tmp_path / "b.tsv")
    assert rows[0].fields == {"sentence": 'it is "good', "label": "x"} and rows[1].where.endswith("b.tsv:4")
    train, val = load_splits(str(tmp_path / "a.json"), None, 0.5, seed=1)
    assert len(train) == len(val) == 1



@pytest.mark.parametrize("name", ["sst2-classify.yaml", "alpaca-sft.yaml"])
def test_ready_configs_are_valid(name: str) -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.finetune.task == ("classify" if "sst2" in name else "sft")


def test_group_by_length_batches_similar_lengths_and_visits_every_row() -> None:
    lengths = [int(x) for x in torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))]
    rows = list(range(1000))

    def sampler(group: bool) -> RowSampler:
        return RowSampler(rows, 16, seed=3, collate=list, lengths=lengths if group else None)

    def padding(s: RowSampler) -> int:  # padded positions of the first epoch's whole batches
        batches = [[lengths[i] for i in s.indices(step)] for step in range(1000 // 16)]
        return sum(len(b) * max(b) - sum(b) for b in batches)

    grouped, plain = sampler(True), sampler(False)
    for s in (grouped, plain):  # one epoch is a permutation of the rows
        epoch = [i for step in range(1000 // 16) for i in s.indices(step)] + s._permutation(0)[-(1000 % 16):].tolist()
        assert sorted(epoch) == rows
    assert padding(grouped) < padding(plain) / 5
    assert [grouped.indices(step) for step in (0, 7, 70)] == [sampler(True).indices(step) for step in (0, 7, 70)]
    assert grouped.indices(0) != plain.indices(0)
    assert grouped._permutation(1).tolist() != grouped._permutation(0).tolist()  # a new order every epoch
