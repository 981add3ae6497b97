"""`lmforge chat`: a terminal conversation with a model, through its tokenizer's chat template.

The template is tokenizer_config.json's "chat_template" (Jinja, as `transformers.apply_chat_template`
renders it), rendered in a sandbox. Without one, turns are written as plain "User: ...\\nAssistant:" lines.
When the conversation no longer fits the model's context (leaving room for the reply), the oldest turns
are dropped; the system message stays. Replies stream as they are decoded.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.generate import SamplingParams, load_for_generation, stream_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.config import Config
    from lmforge.model.gpt import GPT

log = logging.getLogger("lmforge")

Message = Mapping[str, str]
# Special tokens that end a turn in common chat templates (ours is <|end|>); those in the template are stops.
END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "</s>",
                      "<|endoftext|>")  # fmt: skip
PLAIN_STOP = "\nUser:"


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class ChatFormat:
    """Renders a conversation into the prompt text the model expects, and knows where a reply ends."""

    def __init__(self, tokenizer: Tokenizer, tokenizer_config: Mapping[str, Any]) -> None:
        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):  # HF allows a list of named templates
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        self.template_text = template if isinstance(template, str) and template.strip() else None
        self.special = {key: _token_text(tokenizer_config.get(key))
                        for key in ("bos_token", "eos_token", "pad_token", "unk_token")}  # fmt: skip
        self._template = self._compile(self.template_text) if self.template_text else None
        self.stop: list[str] = [] if self._template else [PLAIN_STOP]
        self.stop_token_ids: list[int] = []
        if self.template_text:
            for token in END_OF_TURN_TOKENS:
                token_id = tokenizer.token_to_id(token)
                if token in self.template_text and token_id is not None:
                    self.stop_token_ids.append(token_id)

    @property
    def has_template(self) -> bool:
        return self._template is not None

    @staticmethod
    def _compile(text: str) -> Any:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(text)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"tokenizer_config.json: chat_template does not compile ({exc})") from None

    def render(self, messages: Sequence[Message]) -> str:
        """The conversation so far, ending where the assistant's reply begins."""
        if self._template is None:
            return render_plain(messages)
        import jinja2

        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True, **self.special)
        except jinja2.TemplateError as exc:
            raise LmforgeError(f"chat template failed: {exc}") from None


def render_plain(messages: Sequence[Message]) -> str:
    """The fallback format: the system message as a first paragraph, then "User:" / "Assistant:" lines."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        else:
            parts.append(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n")
    return "".join(parts) + "Assistant:"


class ChatSession:
    """A conversation: the history, and `reply` to stream the model's answer to a user message."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, tokenizer_config: Mapping[str, Any],
                 params: SamplingParams, system: str | None = None, eos_id: int | None = None,
                 use_cache: bool = True) -> None:  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.format = ChatFormat(tokenizer, tokenizer_config)
        self.params = replace(params, stop=[*params.stop, *self.format.stop],
                              stop_token_ids=[*params.stop_token_ids, *self.format.stop_token_ids])  # fmt: skip
        self.system, self.eos_id, self.use_cache = system, eos_id, use_cache
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _encode(self, messages: Sequence[Message]) -> list[int]:
        # The template writes any BOS itself (as transformers does): no special tokens added on top.
        add_special = not self.format.has_template
        return self.tokenizer.encode(self.format.render(messages), add_special_tokens=add_special).ids

    def prompt_ids(self) -> list[int]:
        """The conversation as token ids, dropping the oldest turns until it leaves room for the reply."""
        block = self.model.config.block_size
        budget = block - max(1, min(self.params.max_new_tokens, block // 2))
        ids = self._encode(self.messages)
        dropped = 0
        while len(ids) > budget:
            first = next((i for i, m in enumerate(self.messages) if m["role"] != "system"), None)
            if first is None or first == len(self.messages) - 1:
                break  # only the newest message is left: generation cuts it from the left
            del self.messages[first]
            if first < len(self.messages) - 1 and self.messages[first]["role"] == "assistant":
                del self.messages[first]  # drop the whole exchange
            dropped += 1
            ids = self._encode(self.messages)
        if dropped:
            log.info("conversation too long for the context of %d tokens: dropped the %d oldest turns",
                     block, dropped)  # fmt: skip
        return ids

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the answer to `user_text`; the exchange joins the history once the answer is complete."""
        self.messages.append({"role": "user", "content": user_text})
        pieces: list[str] = []
        try:
            for delta in stream_text(self.model, self.tokenizer, self.prompt_ids(), self.params,
                                     use_cache=self.use_cache, eos_id=self.eos_id):  # fmt: skip
                if not pieces:
                    delta = delta.lstrip(" ") if not self.format.has_template else delta
                    if not delta:
                        continue
                pieces.append(delta)
                yield delta
        except BaseException:
            self.messages.pop()  # an interrupted exchange is forgotten
            raise
        self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})


def _read_lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        while True:
            try:
                yield input("> ")
            except EOFError:
                print()
                return
    else:
        for line in stdin:
            yield line.rstrip("\r\n")


def chat_loop(session: ChatSession, lines: Iterable[str], out: TextIO,
              note: Callable[[str], None] | None = None) -> None:
    """Answer each line; `/reset` clears the history, `/exit` (or the end of input) quits."""
    note = note or (lambda text: print(text, file=sys.stderr))
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            note("(history cleared)")
            continue
        for delta in session.reply(text):
            out.write(delta)
            out.flush()
        out.write("\n")
        out.flush()


def run_chat(cfg: Config, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """`lmforge chat MODEL`: read user lines from stdin (a terminal or a pipe) and stream the replies."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    gc = cfg.generate
    params = SamplingParams.from_config(gc)
    loaded = load_for_generation(gc)
    if loaded.tokenizer is None:
        raise LmforgeError(f"{loaded.source}: no tokenizer.json found beside the model")
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.tokenizer_config, params, system=gc.system,
                          eos_id=loaded.eos_id, use_cache=gc.use_cache)  # fmt: skip
    interactive = stdin.isatty()
    if not session.format.has_template:
        print("note: the tokenizer has no chat template; using a plain 'User: ... / Assistant:' format",
              file=sys.stderr)  # fmt: skip
    if interactive:
        print("chatting with " + str(loaded.source) + " (/reset clears the history, /exit quits)", file=sys.stderr)
    chat_loop(session, _read_lines(stdin, interactive), out)
