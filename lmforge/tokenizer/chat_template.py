"""The default chat template, built from the tokenizer's chat tokens.

A conversation renders as (with the default tokens)::

    <|system|>
    You are helpful.<|end|>
    <|user|>
    Hi<|end|>
    <|assistant|>
    Hello!<|end|>

and `add_generation_prompt` appends `<|assistant|>\\n`, so a model continues with the reply and stops at
`<|end|>`. The Jinja text is stored in tokenizer_config.json as "chat_template", where
`transformers`' `apply_chat_template` finds it; `render_chat` is the same rendering in plain Python, for
stages that must not depend on `transformers` or Jinja.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmforge.errors import ConfigError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTokens:
    system: str
    user: str
    assistant: str
    end: str

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> ChatTokens:
        """`tokenizer.chat_tokens`: [system, user, assistant, end, extra...]; extras are plain specials."""
        if len(tokens) < 4:
            raise ConfigError(
                f"tokenizer.chat_tokens: expected [system, user, assistant, end] tokens, got {list(tokens)}"
            )
        return cls(*tokens[:4])

    def role_token(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r} (expected one of {', '.join(ROLES)})")
        return getattr(self, role)


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def chat_template(tokens: ChatTokens) -> str:
    """The Jinja chat template for `tokens`, in the form `transformers.apply_chat_template` expects."""
    q = _jinja_str
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] == 'system' %}}{{{{ {q(tokens.system)} }}}}"
        f"{{% elif message['role'] == 'user' %}}{{{{ {q(tokens.user)} }}}}"
        f"{{% elif message['role'] == 'assistant' %}}{{{{ {q(tokens.assistant)} }}}}"
        "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
        f"{{{{ '\\n' + message['content'] + {q(tokens.end)} + '\\n' }}}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {q(tokens.assistant)} + '\\n' }}}}{{% endif %}}"
    )


def render_chat(
    messages: Sequence[Mapping[str, str]], tokens: ChatTokens, add_generation_prompt: bool = False
) -> str:
    """Exactly what `chat_template(tokens)` renders, without Jinja."""
    parts = [f"{tokens.role_token(m['role'])}\n{m['content']}{tokens.end}\n" for m in messages]
    if add_generation_prompt:
        parts.append(tokens.assistant + "\n")
    return "".join(parts)
