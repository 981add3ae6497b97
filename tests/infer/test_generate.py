"""Sampling, the KV cache, batching, stop strings and streaming, on tiny random models of both flavours."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.generate import (
    FastDecodeStep,
    IncrementalDetokenizer,
    SamplingParams,
    auto_threads,
    generate,
    min_p_filter,
    sample_next,
    stream,
    stream_text,
    top_k_filter,
    top_p_filter,
)

PROMPTS = ["To be", "Whether 'tis nobler in the", "t"]  # different lengths: a left-padded batch
GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


def ids(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


# -- the KV cache and batching ----------------------------------------------------------------------------


def test_auto_threads_follow_the_work_per_step() -> None:
    # One thread for a small model decoding one row; a batch of it (or a bigger model) is worth all cores.
    assert auto_threads(800_000, rows=1) == 1
    assert auto_threads(800_000, rows=8) is None
    assert auto_threads(10_000_000, rows=1) is None
    assert auto_threads(600_000, rows=8) == 1


def test_greedy_same_with_and_without_cache_batch_and_alone(tiny) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    cached = generate(tiny.model, tiny.tokenizer, PROMPTS, params)
    uncached = generate(tiny.model, tiny.tokenizer, PROMPTS, params, use_cache=False)
    alone = [generate(tiny.model, tiny.tokenizer, [p], params)[0] for p in PROMPTS]
    alone_uncached = [generate(tiny.model, tiny.tokenizer, [p], params, use_cache=False)[0] for p in PROMPTS]
    assert ids(cached) == ids(uncached) == ids(alone) == ids(alone_uncached)
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in cached)
    assert len({tuple(t) for t in ids(cached)}) > 1  # the rows really differ


def test_fast_decode_step_matches_the_model(tiny) -> None:
    model = tiny.model
    x = torch.randint(0, model.config.vocab_size, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, :4] = False  # a left-padded row
    with torch.inference_mode():
        full = model(x, attention_mask=mask)[0][:, -1]
        cache = model.new_kv_cache(3, 9)
        step = FastDecodeStep(model, cache)
        model.forward_hidden(x[:, :8], attention_mask=mask[:, :8], kv_cache=cache)
        positions = mask[:, :8].sum(-1)
        fast = step(x[:, 8], positions, cache.mask[:, None, None, :9])
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_lora_and_hooked_models_decode_through_their_modules(tiny) -> None:
    import copy

    from lmforge.model.lora import LoraSpec, apply_lora

    model = apply_lora(copy.deepcopy(tiny.model), LoraSpec(rank=2)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # a trained adapter: its update changes the output
    assert FastDecodeStep.supports(model)
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    cached = generate(model, tiny.tokenizer, PROMPTS, params)
    assert ids(cached) == ids(generate(model, tiny.tokenizer, PROMPTS, params, use_cache=False))
    assert ids(cached) != ids(generate(tiny.model, tiny.tokenizer, PROMPTS, params))
    handle = model.blocks[0].mlp.up.register_forward_hook(lambda module, args, out: out * 0)
    assert not FastDecodeStep.supports(model)
    hooked = generate(model, tiny.tokenizer, PROMPTS, params)
    assert ids(hooked) == ids(generate(model, tiny.tokenizer, PROMPTS, params, use_cache=False)) != ids(cached)
    handle.remove()


def test_finished_rows_stop_while_others_go_on(tiny) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=0)
    free = generate(tiny.model, tiny.tokenizer, PROMPTS, params)
    # An EOS that one row reaches after a few tokens (others may reach it too, or never).
    row, at = next((r, k) for r, c in enumerate(free) for k in range(3, 24) if c.token_ids[k] not in c.token_ids[:k])
    eos = free[row].token_ids[at]
    stopped = generate(tiny.model, tiny.tokenizer, PROMPTS, params, eos_id=eos)
    for before, after in zip(free, stopped):
        cut = before.token_ids.index(eos) if eos in before.token_ids else None
        assert after.token_ids == before.token_ids[:cut]
        assert after.finish_reason == ("length" if cut is None else "stop")
    assert len(stopped[row].token_ids) == at


def test_eos_first_gives_empty_text(tiny) -> None:
    first = generate(tiny.model, tiny.tokenizer, ["To be"], GREEDY)[0].token_ids[0]
    c = generate(tiny.model, tiny.tokenizer, ["To be"], GREEDY, eos_id=first)[0]
    assert (c.token_ids, c.text, c.finish_reason) == ([], "", "stop")


def test_token_id_prompts_and_batch_size(tiny) -> None:
    encoded = [tiny.tokenizer.encode(p).ids for p in PROMPTS]
    by_text = generate(tiny.model, tiny.tokenizer, PROMPTS, GREEDY)
    by_ids = generate(tiny.model, tiny.tokenizer, encoded, GREEDY, batch_size=2)
    assert ids(by_text) == ids(by_ids)
    assert by_text[0].prompt_ids == encoded[0]


# -- sampling ---------------------------------------------------------------------------------------------


def test_seed_reproducible_and_top_k_1_is_greedy(tiny) -> None:
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=7)
    a = generate(tiny.model, tiny.tokenizer, PROMPTS, params)
    b = generate(tiny.model, tiny.tokenizer, PROMPTS, params)
    c = generate(tiny.model, tiny.tokenizer, PROMPTS, SamplingParams(max_new_tokens=30, temperature=1.0, seed=8))
    assert ids(a) == ids(b) != ids(c)
    top1 = SamplingParams(max_new_tokens=24, temperature=1.3, top_k=1, seed=3)
    assert ids(generate(tiny.model, tiny.tokenizer, PROMPTS, top1)) == ids(
        generate(tiny.model, tiny.tokenizer, PROMPTS, GREEDY)
    )


def test_repetition_penalty_changes_output(tiny) -> None:
    plain = generate(tiny.model, tiny.tokenizer, PROMPTS, GREEDY)
    penalized = generate(tiny.model, tiny.tokenizer, PROMPTS,
                         SamplingParams(max_new_tokens=24, temperature=0, repetition_penalty=5.0))  # fmt: skip
    assert ids(plain) != ids(penalized)
    # A strong penalty makes a greedy row avoid repeating: more distinct tokens than without.
    assert sum(len(set(t)) for t in ids(penalized)) > sum(len(set(t)) for t in ids(plain))


PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_filters_on_hand_made_logits() -> None:
    assert kept(top_k_filter(LOGITS, 2)) == [0, 1]
    assert kept(top_p_filter(LOGITS, 0.7)) == [0, 1]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert kept(top_p_filter(LOGITS, 0.85)) == [0, 1, 2]
    assert kept(top_p_filter(LOGITS, 0.3)) == [0]  # the most likely token always stays
    assert kept(top_p_filter(LOGITS, 1.0)) == [0, 1, 2, 3]
    assert kept(min_p_filter(LOGITS, 0.4)) == [0, 1]  # threshold 0.2
    assert kept(min_p_filter(LOGITS, 0.25)) == [0, 1, 2]  # threshold 0.125
    shuffled = LOGITS[:, [2, 0, 3, 1]]  # the filters do not depend on the order of the vocabulary
    assert kept(top_p_filter(shuffled, 0.7)) == [1, 3]
    assert kept(min_p_filter(shuffled, 0.4)) == [1, 3]


def test_sampling_follows_the_filtered_distribution() -> None:
    n = 20_000
    logits = LOGITS.expand(n, 4)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, SamplingParams(temperature=1.0), generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / n
    torch.testing.assert_close(freq, PROBS[0], atol=0.015, rtol=0)
    draws = sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.015, rtol=0)
    draws = sample_next(logits, SamplingParams(temperature=1.0, min_p=0.25), generator=gen)
    assert set(draws.tolist()) == {0, 1, 2}


def test_temperature_sharpens() -> None:
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(LOGITS.expand(5000, 4), SamplingParams(temperature=0.25), generator=gen)
    expected = PROBS[0, 0] ** 4 / (PROBS[0] ** 4).sum()
    assert math.isclose((draws == 0).float().mean().item(), expected.item(), abs_tol=0.02)


@pytest.mark.parametrize(
    ("key", "value"),
    [("top_p", 0.0), ("top_p", 1.5), ("temperature", -0.1), ("min_p", 1.0), ("top_k", -1),
     ("max_new_tokens", 0), ("repetition_penalty", 0.0)],
)  # fmt: skip
def test_invalid_sampling_values(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"generate.{key}"):
        SamplingParams(**{key: value})


def test_empty_prompt_is_an_error(tiny) -> None:
    with pytest.raises(LmforgeError, match="empty"):
        generate(tiny.model, tiny.tokenizer, ["ok", ""], GREEDY)
    with pytest.raises(LmforgeError, match="no prompt"):
        generate(tiny.model, tiny.tokenizer, [], GREEDY)


# -- stop strings, context, streaming ---------------------------------------------------------------------


def test_stop_strings(tiny) -> None:
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=1)
    free = generate(tiny.model, tiny.tokenizer, ["To be"], params)[0]
    stop = free.text[5:7]
    assert len(stop) == 2
    c = generate(tiny.model, tiny.tokenizer, ["To be"], SamplingParams(**{**params.__dict__, "stop": [stop]}))[0]
    assert c.finish_reason == "stop"
    assert c.text == free.text[: free.text.index(stop)]
    assert free.token_ids[: len(c.token_ids)] == c.token_ids


def test_streaming_joins_to_the_generated_text(tiny) -> None:
    for params in (SamplingParams(max_new_tokens=30, temperature=1.0, seed=5),
                   SamplingParams(max_new_tokens=30, temperature=1.0, seed=5, stop=["e ", "xyz"])):  # fmt: skip
        completions = generate(tiny.model, tiny.tokenizer, PROMPTS, params)
        events = list(stream(tiny.model, tiny.tokenizer, PROMPTS, params))
        for i, c in enumerate(completions):
            mine = [e for e in events if e.index == i]
            assert "".join(e.text for e in mine) == c.text
            assert [e.token_id for e in mine if e.token_id is not None] == c.token_ids
            assert mine[-1].finish_reason == c.finish_reason
            assert all(e.finish_reason is None for e in mine[:-1])
        alone = "".join(stream_text(tiny.model, tiny.tokenizer, PROMPTS[0], params))
        assert alone == generate(tiny.model, tiny.tokenizer, PROMPTS[:1], params)[0].text


def test_long_prompt_is_cut_from_the_left(tiny, caplog: pytest.LogCaptureFixture) -> None:
    block = tiny.model.config.block_size
    prompt = "To be, or not to be. " * 10  # 210 characters, past the context of 64
    params = SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        c = generate(tiny.model, tiny.tokenizer, [prompt], params)[0]
    assert "dropping its first" in caplog.text
    assert c.prompt_ids == tiny.tokenizer.encode(prompt).ids[-(block // 2) :]
    assert c.truncated == len(prompt) - block // 2
    assert len(c.token_ids) == block - block // 2 + 1 and c.finish_reason == "length"  # the cache is full


def test_incremental_detokenizer_never_splits_a_character() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["hello world, hello there"] * 5, trainer=trainer)
    text = "hello 🙂 wörld 中文 done"
    token_ids = tokenizer.encode(text).ids
    assert len(token_ids) > len(text.split())  # the emoji and CJK characters are several byte tokens
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(t) for t in token_ids]
    deltas.append(detok.finish())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text == detok.text
    assert "" in deltas  # some tokens were half a character and waited
    # An incomplete character at the end still comes out (as U+FFFD), like a plain decode.
    detok = IncrementalDetokenizer(tokenizer)
    partial = tokenizer.encode("a🙂").ids[:-1]
    out = "".join(detok.add(t) for t in partial) + detok.finish()
    assert out == tokenizer.decode(partial)
