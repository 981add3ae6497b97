"""Chat: the template, the plain fallback, the history kept within the context, the loop's commands."""

from __future__ import annotations

import io
from pathlib import Path

from lmforge.infer.chat import ChatFormat, ChatSession, chat_loop, render_plain
from lmforge.infer.generate import SamplingParams
from lmforge.infer.load import load_model
from lmforge.tokenizer.chat_template import ChatTokens, render_chat

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And?"}]  # fmt: skip


def test_template_renders_as_transformers_would(run_dir: Path) -> None:
    loaded = load_model(run_dir)  # the template comes from the run's tokenizer_config.json
    fmt = ChatFormat(loaded.tokenizer, loaded.tokenizer_config)
    assert fmt.has_template
    tokens = ChatTokens("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    assert fmt.render(MESSAGES) == render_chat(MESSAGES, tokens, add_generation_prompt=True)
    assert fmt.stop_token_ids == [loaded.tokenizer.token_to_id("<|end|>")]  # the EOS stops anyway
    # transformers' own rendering of the same template agrees.
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=loaded.tokenizer,
                                 chat_template=loaded.tokenizer_config["chat_template"])  # fmt: skip
    assert fmt.render(MESSAGES) == hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_plain_fallback(plain_run_dir: Path) -> None:
    loaded = load_model(plain_run_dir)
    fmt = ChatFormat(loaded.tokenizer, loaded.tokenizer_config)
    assert not fmt.has_template and fmt.stop == ["\nUser:"]
    assert render_plain(MESSAGES) == "Be kind.\n\nUser: Hi\nAssistant: Hello!\nUser: And?\nAssistant:"


def test_history_is_cut_to_the_context_keeping_the_system_message(run_dir: Path) -> None:
    loaded = load_model(run_dir)
    block = loaded.model.config.block_size  # 64
    params = SamplingParams(max_new_tokens=8, temperature=0)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.tokenizer_config, params, system="Be.")
    for i in range(6):
        session.messages += [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": f"answer {i}"}]  # fmt: skip
    session.messages.append({"role": "user", "content": "last"})
    ids = session.prompt_ids()
    assert len(ids) <= block - 8
    assert session.messages[0] == {"role": "system", "content": "Be."}
    assert session.messages[-1]["content"] == "last"
    assert session.messages[1]["role"] == "user"  # whole exchanges were dropped
    assert 3 <= len(session.messages) < 14


def test_chat_loop_keeps_history_and_resets(run_dir: Path) -> None:
    loaded = load_model(run_dir)
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.tokenizer_config,
                          SamplingParams(max_new_tokens=6, temperature=0), eos_id=loaded.eos_id)  # fmt: skip
    out, notes = io.StringIO(), []
    chat_loop(session, ["hi", "there"], out, note=notes.append)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert out.getvalue().count("\n") == 2
    chat_loop(session, ["/reset", "hi", "/exit", "never"], out, note=notes.append)
    assert notes == ["(history cleared)"]
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["hi"]
