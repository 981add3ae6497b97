"""The official `openai` client against a real server: completions, chat, streaming, usage, sampling."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_helpers import PROMPTS, ServerThread

from lmforge.infer.chat import ChatSession
from lmforge.infer.generate import SamplingParams, generate
from lmforge.serve.backends import Served

MODEL = "tiny"


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def reference(served: Served, prompt: str | list[int], **params: object) -> object:
    """What lmforge's own `generate` gives for one prompt."""
    lm = served.lm
    assert lm is not None
    model = lm.model
    return generate(model, lm.tokenizer, [prompt], SamplingParams(**params), eos_id=lm.eos_id)[0]  # type: ignore[arg-type]


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["max_model_len"] == 64
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_completion_equals_generate_with_usage(client: openai.OpenAI, tiny_served: Served) -> None:
    tokenizer = tiny_served.lm.tokenizer
    for prompt in PROMPTS[:4]:
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0)
        ref = reference(tiny_served, prompt, max_new_tokens=20, temperature=0)
        assert out.object == "text_completion" and out.model == MODEL
        assert out.choices[0].text == ref.text
        assert out.choices[0].finish_reason == ref.finish_reason
        assert out.usage.prompt_tokens == len(tokenizer.encode(prompt).ids)
        assert out.usage.completion_tokens == len(ref.token_ids)
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_completion_joins_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    for prompt in PROMPTS[:3]:
        whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
        chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))  # fmt: skip
        pieces = [c.choices[0].text for c in chunks if c.choices]
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert "".join(pieces) == whole.choices[0].text
        assert reasons == [whole.choices[0].finish_reason]
        assert len(pieces) > 1  # streamed piece by piece, not in one chunk
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_and_default_fill_the_room_left(client: openai.OpenAI, tiny_served: Served) -> None:
    prompt = PROMPTS[0]
    prompt_tokens = len(tiny_served.lm.tokenizer.encode(prompt).ids)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0,
                                    extra_body={"ignore_eos": True})  # fmt: skip
    assert out.usage.completion_tokens == 7 and out.choices[0].finish_reason == "length"
    # No max_tokens: the default (256) is cut to what the 64-token context leaves.
    out = client.completions.create(model=MODEL, prompt=prompt, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 64 - prompt_tokens


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    for prompt in PROMPTS:
        text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0).choices[0].text
        cut = next((i for i, ch in enumerate(text) if i > 0 and ch != text[0]), None)
        if cut is not None:
            break
    else:
        pytest.fail("no prompt gave a varied completion")
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=[text[cut]])
    assert stopped.choices[0].text == text[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0,
                                         stop=text[cut], stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[:cut]


def test_chat_uses_the_chat_template(client: openai.OpenAI, tiny_served: Served) -> None:
    lm = tiny_served.lm
    model = lm.model
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be?"}]
    session = ChatSession(model, lm.tokenizer, lm.tokenizer_config, SamplingParams(max_new_tokens=24, temperature=0),
                          system="Be brief.", eos_id=lm.eos_id)  # fmt: skip
    expected = "".join(session.reply("To be?"))
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    prompt_ids = lm.tokenizer.encode(lm.chat_format.render(messages), add_special_tokens=False).ids
    assert out.usage.prompt_tokens == len(prompt_ids)

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                                 stream=True))  # fmt: skip
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_seeded_sampling_is_reproducible_whatever_the_batch(client: openai.OpenAI, tiny_served: Served) -> None:
    def sampled(seed: int | None) -> str:
        return client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=24, temperature=1.0,
                                         seed=seed).choices[0].text  # fmt: skip

    alone = sampled(7)
    assert alone == reference(tiny_served, PROMPTS[1], max_new_tokens=24, temperature=1.0, seed=7).text
    with ThreadPoolExecutor(6) as pool:  # the same seed while other sampled requests share the batch
        texts = list(pool.map(sampled, [7, None, 7, None, 7, None]))
    assert texts[0] == texts[2] == texts[4] == alone
    assert sampled(8) != alone or sampled(9) != alone  # other seeds draw other samples


def test_top_p_near_zero_is_greedy(client: openai.OpenAI) -> None:
    greedy = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=20, temperature=0)
    nucleus = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=20, temperature=1.5, top_p=1e-6)
    assert nucleus.choices[0].text == greedy.choices[0].text


def test_several_prompts_and_choices(client: openai.OpenAI, tiny_served: Served) -> None:
    out = client.completions.create(model=MODEL, prompt=PROMPTS[:2], n=2, max_tokens=12, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(PROMPTS[:2]):
        expected = reference(tiny_served, prompt, max_new_tokens=12, temperature=0).text
        assert out.choices[2 * i].text == out.choices[2 * i + 1].text == expected
    ids = tiny_served.lm.tokenizer.encode(PROMPTS[3]).ids  # a prompt given as token ids
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == reference(tiny_served, PROMPTS[3], max_new_tokens=12, temperature=0).text
