"""Supervised fine-tuning data: instruction records -> token ids + labels, the prompt masked out.

A record is either a chat (`messages`: a list of {role, content}) or an Alpaca instruction
(`instruction`, optional `input`, `output`: the user turn is the instruction, then a blank line and the
input; the assistant turn is the output). It is rendered through the chat template stored with the
tokenizer (tokenizer_config.json's Jinja "chat_template", in a sandbox, as `transformers` renders it), and
tokenized turn by turn: the tokens of every assistant reply (up to and including the end-of-turn marker)
are learnt, everything else gets the label -100 (ignored by the loss).

Examples longer than `max_length + 1` tokens are truncated (counted in the report); one whose replies are
truncated away entirely is dropped (counted). Batches are either padded (one example per row, right
padding, labels -100) or packed: several examples share a row, each with its own segment id, so the model
attends only within an example and restarts positions at each (see `GPT.forward(segment_ids=...)`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.finetune.records import Record
from lmforge.train.loop import MicroBatch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.config import FinetuneConfig

log = logging.getLogger("lmforge")

IGNORE_INDEX = -100
DEFAULT_CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------------------------------------------
# The chat template
# ---------------------------------------------------------------------------------------------------------


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class ChatRenderer:
    """tokenizer_config.json's chat template, compiled in jinja2's ImmutableSandboxedEnvironment."""

    def __init__(self, template: str, special_tokens: Mapping[str, str] | None = None) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(template)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"the chat template does not compile ({type(exc).__name__}: {exc})") from None
        self.special = dict(special_tokens or {})

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, tokenizer_config: Mapping[str, Any]) -> ChatRenderer:
        """The tokenizer's own template; without one, lmforge's default when the tokenizer has its chat tokens."""
        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):  # Hugging Face allows a list of named templates
            template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
        special = {k: _token_text(tokenizer_config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
        if isinstance(template, str) and template.strip():
            return cls(template, special)
        if all(tokenizer.token_to_id(t) is not None for t in DEFAULT_CHAT_TOKENS):
            from lmforge.tokenizer.chat_template import ChatTokens, chat_template

            return cls(chat_template(ChatTokens(*DEFAULT_CHAT_TOKENS)), special)
        raise LmforgeError(
            "the base model's tokenizer has no chat template (tokenizer_config.json 'chat_template') and "
            f"none of lmforge's chat tokens {'/'.join(DEFAULT_CHAT_TOKENS)}; SFT needs one"
        )

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, where: str) -> str:
        try:
            text = self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                        **self.special)  # fmt: skip
        except Exception as exc:  # jinja2.TemplateError, or a TypeError/... raised inside the template
            raise LmforgeError(f"{where}: the chat template failed to render ({type(exc).__name__}: {exc})") from None
        return text


# ---------------------------------------------------------------------------------------------------------
# Records -> conversations -> examples
# ---------------------------------------------------------------------------------------------------------


def record_messages(record: Record, fcfg: FinetuneConfig) -> list[dict[str, str]]:
    """The conversation of a chat or Alpaca record; one-line DataErrors for missing or empty fields."""
    r, where = record.fields, record.where
    if fcfg.messages_field in r:
        return _chat_messages(r[fcfg.messages_field], where, fcfg.messages_field)
    fields = fcfg.instruction_fields
    if len(fields) < 2:
        raise ConfigError("finetune.instruction_fields needs at least [instruction, output]")
    prompt_key, response_key, middle = fields[0], fields[-1], fields[1:-1]
    for key in (prompt_key, response_key):
        if key not in r:
            raise DataError(f"{where}: missing field '{key}' (expected '{fcfg.messages_field}' or "
                            f"{'/'.join(fields)})")  # fmt: skip
    parts = []
    for key in (prompt_key, *middle, response_key):
        value = r.get(key)
        value = "" if value is None else value
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' is {type(value).__name__}, not text")
        parts.append(value)
    if not parts[0].strip():
        raise DataError(f"{where}: empty instruction (field '{prompt_key}')")
    if not parts[-1].strip():
        raise DataError(f"{where}: empty response (field '{response_key}')")
    user = "\n\n".join(p.strip() for p in parts[:-1] if p.strip())
    messages = [{"role": "system", "content": fcfg.system}] if fcfg.system else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": parts[-1]}]


def _chat_messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of {{role, content}}")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: {key}[{i}] is missing field 'role' or 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: {key}[{i}] has unknown role {m['role']!r} (expected {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: {key}[{i}].content is {type(m['content']).__name__}, not text")
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(f"{where}: empty response ({key}[{i}], an assistant message)")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field '{key}' has no assistant message to learn")
    return messages


@dataclass
class SFTExample:
    ids: list[int]  # the whole rendered conversation (at most max_length + 1 tokens)
    labels: list[int]  # ids where learnt (assistant replies), IGNORE_INDEX elsewhere; same length
    where: str = ""

    @property
    def inputs(self) -> list[int]:
        return self.ids[:-1]

    @property
    def targets(self) -> list[int]:
        return self.labels[1:]


def encode_conversation(messages: Sequence[Mapping[str, str]], renderer: ChatRenderer, tokenizer: Tokenizer,
                        where: str) -> tuple[list[int], list[int]]:  # fmt: skip
    """(ids, labels) of a conversation: each assistant reply's tokens learnt, everything else masked.

    The template is rendered up to each reply (with the generation prompt) and through it; each such
    rendering must extend the previous one, as every sensible chat template does."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""

    def add(text: str, learn: bool) -> None:
        piece = tokenizer.encode(text, add_special_tokens=False).ids if text else []
        ids.extend(piece)
        labels.extend(piece if learn else [IGNORE_INDEX] * len(piece))

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = renderer.render(messages[:i], True, where)
        full = renderer.render(messages[: i + 1], False, where)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise LmforgeError(
                f"{where}: the chat template is not incremental (the text before a reply changes when the "
                "reply is added), so the prompt cannot be masked"
            )
        add(prompt[len(done) :], learn=False)
        add(full[len(prompt) :], learn=True)
        done = full
    return ids, labels


@dataclass
class SFTStats:
    examples: int = 0
    truncated: int = 0  # longer than max_length + 1 tokens: cut
    dropped: int = 0  # nothing left to learn after truncation
    skipped: int = 0  # bad records skipped (run.on_error=skip)
    tokens: int = 0
    learnt_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def build_sft_examples(records: Sequence[Record], fcfg: FinetuneConfig, renderer: ChatRenderer,
                       tokenizer: Tokenizer, max_length: int, skip_bad: bool = False
                       ) -> tuple[list[SFTExample], SFTStats]:  # fmt: skip
    """Examples of the records; a bad record raises its one-line DataError, or with `skip_bad` is counted
    and skipped (a template that fails is never skipped: it would fail on every record)."""
    stats = SFTStats()
    examples = []
    for record in records:
        try:
            messages = record_messages(record, fcfg)
        except DataError as exc:
            if not skip_bad:
                raise
            stats.skipped += 1
            if stats.skipped <= 5:
                log.warning("skipped: %s", exc)
            continue
        ids, labels = encode_conversation(messages, renderer, tokenizer, record.where)
        if len(ids) > max_length + 1:
            stats.truncated += 1
            ids, labels = ids[: max_length + 1], labels[: max_length + 1]
        learnt = sum(1 for t in labels[1:] if t != IGNORE_INDEX)
        if learnt == 0:
            stats.dropped += 1
            continue
        stats.examples += 1
        stats.tokens += len(ids) - 1
        stats.learnt_tokens += learnt
        examples.append(SFTExample(ids, labels, record.where))
    return examples, stats


# ---------------------------------------------------------------------------------------------------------
# Rows and batches
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One row of a batch: one example (padding), or several packed examples."""

    examples: list[SFTExample] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(len(e.ids) - 1 for e in self.examples)


def pack(examples: Sequence[SFTExample], max_length: int, seed: int) -> list[Row]:
    """Examples in a seeded shuffled order, each appended to the current row while it fits in max_length."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows: list[Row] = []
    current = Row()
    for i in order:
        example = examples[i]
        if current.examples and current.length + len(example.ids) - 1 > max_length:
            rows.append(current)
            current = Row()
        current.examples.append(example)
    if current.examples:
        rows.append(current)
    return rows


def make_rows(examples: Sequence[SFTExample], packing: bool, max_length: int, seed: int) -> list[Row]:
    return pack(examples, max_length, seed) if packing else [Row([e]) for e in examples]


def collate(rows: Sequence[Row], pad_id: int, packed: bool) -> MicroBatch:
    """(inputs, targets) right-padded to the longest row; packed rows add `segment_ids` (1, 2, ... per
    example, 0 for padding) for the model."""
    width = max(r.length for r in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    seg = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        pos = 0
        for k, example in enumerate(row.examples, 1):
            n = len(example.ids) - 1
            x[b, pos : pos + n] = torch.tensor(example.inputs)
            y[b, pos : pos + n] = torch.tensor(example.targets)
            seg[b, pos : pos + n] = k
            pos += n
    if packed:
        return x, y, {"segment_ids": seg}
    return x, y


@torch.no_grad()
def sft_val_loss(model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, batch_size: int,
                 device: torch.device, autocast: Any) -> dict[str, float]:  # fmt: skip
    """Mean cross-entropy per learnt token over every validation example (padded batches)."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            x, y = collate([Row([e]) for e in examples[i : i + batch_size]], pad_id, packed=False)[:2]
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")  # fmt: skip
            total += float(loss)
            count += int((y != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return {"val_loss": total / max(1, count)}
