"""Continuous batching: sequences joining and leaving a running batch decode exactly as they would alone."""

from __future__ import annotations

import queue
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import torch
from serve_helpers import PROMPTS, TEXT, ServerThread, make_model, make_tokenizer, scrape

from lmforge.infer.generate import SamplingParams, generate
from lmforge.serve.backends import BatchDecoder, KVBatchDecoder, RecomputeBatchDecoder
from lmforge.serve.batching import Engine, Generation


def staggered_workload(seed: int, n: int = 16) -> list[tuple[str, int]]:
    """(prompt, max_new_tokens) pairs that fit a 64-token context together."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(0, 50)
        out.append((TEXT[start : start + rng.randint(1, 30)], rng.randint(1, 30)))
    return out


def run_engine(engine: Engine, tokenizer, work: list[tuple[str, int]], eos: int, seed: int,
               params: dict | None = None) -> list[Generation]:  # fmt: skip
    """Submit the workload with small random gaps (so sequences join a running batch), wait for all."""
    rng = random.Random(seed)
    events: queue.Queue = queue.Queue()
    gens = []
    for prompt, max_new in work:
        gen = engine.sequence(tokenizer.encode(prompt).ids, SamplingParams(max_new_tokens=max_new,
                              **(params or {"temperature": 0})), {eos}, events.put)  # fmt: skip
        engine.submit([gen])
        gens.append(gen)
        time.sleep(rng.random() * 0.004)
    finished = 0
    while finished < len(gens):
        if events.get(timeout=30).finish_reason is not None:
            finished += 1
    return gens


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["kv", "kv-modules", "recompute"])
def test_staggered_batch_equals_generate_alone(flavour: str, kind: str) -> None:
    tokenizer, tc = make_tokenizer()
    eos = tokenizer.token_to_id(tc.eos_token)
    model = make_model(tokenizer.get_vocab_size(), 64, flavour)
    hook = None
    if kind == "kv-modules":  # a hooked model decodes through its modules instead of FastDecodeStep
        hook = model.blocks[0].register_forward_hook(lambda module, args, out: None)
    decoder: BatchDecoder
    if kind.startswith("kv"):  # a cache only a little longer than the context: live columns get moved often
        decoder = KVBatchDecoder(model, 4, max_len=70)
        assert (decoder.fast is None) == (hook is not None)
    else:
        def logits(ids: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(ids))[0].numpy()

        decoder = RecomputeBatchDecoder(logits, 64, 4)
    engine = Engine(decoder, tokenizer, max_queue=100).start()
    work = staggered_workload(seed=1)
    try:
        gens = run_engine(engine, tokenizer, work, eos, seed=2)
    finally:
        engine.stop()
        if hook is not None:
            hook.remove()
    for (prompt, max_new), gen in zip(work, gens):
        ref = generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=max_new, temperature=0), eos_id=eos)[0]
        assert (gen.token_ids, gen.text, gen.finish_reason) == (ref.token_ids, ref.text, ref.finish_reason), prompt
    stats = engine.stats()
    assert stats.max_running == 4 and stats.finished == len(work)  # rows were shared
    assert stats.step_rows > stats.steps  # most steps decoded several rows at once
    if isinstance(decoder, KVBatchDecoder):
        assert decoder.moves > 0


def test_cancelled_rows_are_freed_and_the_rest_unharmed() -> None:
    tokenizer, tc = make_tokenizer()
    eos = tokenizer.token_to_id(tc.eos_token)
    model = make_model(tokenizer.get_vocab_size(), 64, "llama")
    decoder = KVBatchDecoder(model, 2)
    engine = Engine(decoder, tokenizer, max_queue=10).start()
    events: queue.Queue = queue.Queue()
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    gens = [engine.sequence(tokenizer.encode(p).ids, params, {eos}, events.put) for p in PROMPTS[:4]]
    try:
        engine.submit(gens)
        while len(gens[0].token_ids) < 3:  # the first two are running, the others wait for a row
            time.sleep(0.001)
        engine.cancel(gens[0])  # its row goes to a waiting sequence
        engine.cancel(gens[3])  # still queued: it never runs
        deadline = time.monotonic() + 30
        while not (gens[1].done and gens[2].done) and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        engine.stop()
    assert len(gens[0].token_ids) < 40 and gens[3].token_ids == []
    for gen, prompt in zip(gens[1:3], PROMPTS[1:3]):
        ref = generate(model, tokenizer, [prompt], params, eos_id=eos)[0]
        assert gen.token_ids == ref.token_ids
    stats = engine.stats()
    assert (stats.cancelled, stats.finished, stats.running, stats.waiting) == (2, 2, 0, 0)
    assert decoder.size == 0


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    tokenizer, tc = make_tokenizer()
    eos = tokenizer.token_to_id(tc.eos_token)
    model = make_model(tokenizer.get_vocab_size(), 64, "gpt2")
    sampled = {"temperature": 1.0, "top_k": 20, "seed": 3}
    engine = Engine(KVBatchDecoder(model, 8), tokenizer).start()
    try:
        alone = run_engine(engine, tokenizer, [("To be", 25)], eos, seed=0, params=sampled)[0]
        crowd = run_engine(engine, tokenizer, [("or not", 25), ("To be", 25), ("the", 25)], eos, seed=0,
                           params={"temperature": 1.0, "top_p": 0.9})  # fmt: skip
        seeded_in_crowd = run_engine(engine, tokenizer, [("To be", 25)] * 3, eos, seed=0, params=sampled)
    finally:
        engine.stop()
    ref = generate(model, tokenizer, ["To be"], SamplingParams(max_new_tokens=25, **sampled), eos_id=eos)[0]
    assert alone.token_ids == ref.token_ids
    assert all(g.token_ids == alone.token_ids for g in seeded_in_crowd)
    assert len(crowd) == 3


def test_concurrent_requests_batch_and_equal_sequential(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def complete(prompt: str) -> tuple[str, str | None]:
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0)
        return out.choices[0].text, out.choices[0].finish_reason

    sequential = [complete(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(complete, PROMPTS))
    assert concurrent == sequential
    metrics = scrape(server.url)
    assert metrics["lmforge_max_running_batch_size"] > 1
    assert metrics["lmforge_engine_step_rows_total"] > metrics["lmforge_engine_steps_total"]
