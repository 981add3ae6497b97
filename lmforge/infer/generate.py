"""Text generation: sampling, a KV cache, batches of prompts, stop strings and streaming.

    params = SamplingParams(max_new_tokens=100, temperature=0.8, top_p=0.95, stop=["\\n\\n"], seed=1)
    completions = generate(model, tokenizer, ["To be", "Once upon a time"], params)
    for delta in stream_text(model, tokenizer, "To be", params):
        print(delta, end="", flush=True)

`generate`, `stream` and `stream_text` all run one loop, `_decode`: the prompts of a batch are left-padded
to one length (the model gets an attention mask and counts positions over real tokens only), prefilled in one
forward pass, then decoded one token per step for the whole batch through a preallocated KV cache. A row that
finishes (EOS, a stop string, max_new_tokens) is fed padding from then on and its output is ignored. Each
step samples in this order: repetition penalty, temperature (0: greedy), top-k, top-p, min-p.

Context: a prompt is cut from the left (with a warning) when it does not leave room for
min(max_new_tokens, block_size // 2) new tokens inside the model's block_size; generation stops
(finish_reason "length") when the cache holds block_size positions.

Text is decoded incrementally (`IncrementalDetokenizer`): a delta is emitted only when it does not end in
U+FFFD, so a multi-byte character split over several byte-level tokens comes out whole, and text that might
be the start of a stop string is held back until it is known not to be one. Joining the deltas of `stream`
gives exactly the `text` of `generate`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError, LmforgeError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.config import Config, GenerateConfig
    from lmforge.infer.load import LoadedModel
    from lmforge.model.gpt import GPT, KVCache

log = logging.getLogger("lmforge")

FinishReason = Literal["stop", "length"]  # stop: EOS, a stop token or a stop string; length: out of tokens
Prompt = str | Sequence[int]

# ---------------------------------------------------------------------------------------------------------
# Parameters and results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0: greedy (argmax)
    top_k: int | None = None  # None or 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    stop: list[str] = field(default_factory=list)  # stop strings, left out of the returned text
    stop_token_ids: list[int] = field(default_factory=list)  # besides the EOS (e.g. a chat end-of-turn)
    seed: int | None = None
    ignore_eos: bool = False  # keep going past EOS and stop tokens (benchmarks)

    def __post_init__(self) -> None:
        """Bad values are a ConfigError naming the `generate.` key, so the CLI prints one line."""
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", self.temperature >= 0, "zero (greedy) or positive"),
            ("top_k", self.top_k is None or self.top_k >= 0, "0 (off) or positive"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty > 0, "positive"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"generate.{key} must be {what}, got {getattr(self, key)}")
        if any(not s for s in self.stop):
            raise ConfigError("generate.stop: a stop string cannot be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_config(cls, gc: GenerateConfig, **overrides: object) -> SamplingParams:
        keys = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(gc).items() if k in keys}
        return cls(**{**values, **overrides})  # type: ignore[arg-type]


@dataclass
class Completion:
    prompt_ids: list[int]  # as the model saw it (after any truncation)
    token_ids: list[int]  # generated, without the EOS / stop token
    text: str  # decoded, without the stop string and what followed it
    finish_reason: FinishReason
    truncated: int = 0  # prompt tokens cut from the left to fit the context


@dataclass
class StreamEvent:
    index: int  # which prompt
    token_id: int | None  # the new token; None when it finished the row (EOS, a stop token)
    text: str  # new text; "" while a character or a possible stop string is incomplete
    finish_reason: FinishReason | None = None  # set on the row's last event


# ---------------------------------------------------------------------------------------------------------
# Sampling: (B, vocab) logits in, (B,) token ids out
# ---------------------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (as transformers): a seen token's logit is divided by `penalty` if positive, else
    multiplied by it. seen: (B, vocab) bool."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Logits outside each row's k largest set to -inf (ties with the k-th are kept)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep each row's smallest set of most likely tokens whose probability adds up to at least p."""
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= p  # the most likely token always has 0 before it, so it stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def process_logits(logits: Tensor, params: SamplingParams, seen: Tensor | None = None) -> Tensor:
    """Float32 logits after the repetition penalty, temperature, top-k, top-p and min-p (in that order)."""
    logits = logits.float()
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k:
        logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample_next(logits: Tensor, params: SamplingParams, seen: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """One token id per row (B,) of the last position's logits (B, vocab)."""
    logits = process_logits(logits, params, seen)
    if params.greedy:
        return logits.argmax(dim=-1)
    # argmax(p / E), E ~ Exp(1) draws from p (a race of exponential clocks): one draw for the whole batch,
    # several times cheaper than torch.multinomial on a CPU. E is kept off 0 (0 / 0 would be NaN).
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(torch.finfo(probs.dtype).tiny)
    return probs.div_(noise).argmax(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Text: incremental decoding and stop strings
# ---------------------------------------------------------------------------------------------------------


class IncrementalDetokenizer:
    """The text of a growing list of token ids, one delta at a time, never half a character.

    Decodes a short window of recent tokens: `decode(ids[prefix:])` minus `decode(ids[prefix:read])`. The
    window keeps one token of context, so decoders that treat a sequence's first token specially
    (SentencePiece's leading space) give the right delta. A delta that ends in U+FFFD (an incomplete UTF-8
    byte sequence) waits for the next token; `finish` lets it out as it is.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens whose text is already in self.text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append a token; return the text it completes ("" if none yet)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """Whatever text is still pending (an incomplete character decodes to U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        delta = self._decode(self.ids[self._prefix :])[len(before) :]
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta


class RowText:
    """One row's decoded text and stop strings: what may be shown so far, and whether a stop string hit."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stop = list(stop)
        self.shown = 0  # characters of detok.text handed out
        self.stopped = False

    @property
    def text(self) -> str:
        return self.detok.text[: self.shown]

    def add(self, token_id: int) -> str:
        self.detok.add(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        self.detok.finish()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.detok.text
        # A stop string can only start in the part not yet shown: a possible start is always held back.
        hits = [i for i in (text.find(s, self.shown) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(text)
        else:  # hold back the longest tail that could still grow into a stop string
            end = len(text) - max((_overlap(text, s, self.shown) for s in self.stop), default=0)
        delta = text[self.shown : end]
        self.shown = end
        return delta


def _overlap(text: str, stop: str, start: int) -> int:
    """Length of the longest suffix of text[start:] that is a proper prefix of `stop`."""
    for k in range(min(len(stop) - 1, len(text) - start), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


# ---------------------------------------------------------------------------------------------------------
# The decode loop
# ---------------------------------------------------------------------------------------------------------


def encode_prompts(tokenizer: Tokenizer | None, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (text is encoded with the tokenizer's own special tokens, e.g. a BOS)."""
    if not prompts:
        raise LmforgeError("no prompt given")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt:
                raise LmforgeError(f"prompt {i + 1} is empty")
            if tokenizer is None:
                raise LmforgeError("the model has no tokenizer.json, so text prompts cannot be encoded")
            ids = tokenizer.encode(prompt).ids
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise LmforgeError(f"prompt {i + 1} is empty")
        out.append(ids)
    return out


def fit_prompt(ids: list[int], block_size: int, max_new_tokens: int, index: int = 0) -> tuple[list[int], int]:
    """(ids, tokens cut): cut from the left to leave room for min(max_new_tokens, block_size // 2) tokens."""
    limit = block_size - max(1, min(max_new_tokens, block_size // 2))
    if len(ids) <= limit:
        return ids, 0
    cut = len(ids) - limit
    log.warning(
        "prompt %d: %d tokens leave too little room in the model's context of %d; "
        "dropping its first %d tokens", index + 1, len(ids), block_size, cut,
    )  # fmt: skip
    return ids[cut:], cut


def _model_device(model: GPT) -> torch.device:
    return model.wte.weight.device


class FastDecodeStep:
    """`GPT.forward_hidden` + `lm_head` for one new token per row through a KV cache, without nn.Module calls.

    Decoding a small model on a CPU is bound by per-operation overhead, not arithmetic: this does the same
    operations as the model (same numerics; the tests compare it with the model's own forward) as direct
    functional calls with the weights looked up once, positions kept in a (B,) tensor and RoPE angles read
    from a table. Linear and norm modules of other types (a LoRA wrapper, a quantized layer) are called
    through their own `forward`, so they keep working; `supports` says when the model is a plain GPT.
    """

    def __init__(self, model: GPT, cache: KVCache) -> None:
        from lmforge.model.gpt import rope_cos_sin

        cfg = model.config
        self.cache = cache
        self.head_dim = cfg.head_dim
        self.split = [cfg.n_head, cfg.n_kv_head, cfg.n_kv_head]  # query, key and value heads in qkv's output
        self.gqa = cfg.n_kv_head != cfg.n_head
        self.wte = model.wte.weight
        self.wpe = model.wpe.weight if model.wpe is not None else None
        self.cos = self.sin = None
        if self.wpe is None:
            positions = torch.arange(cache.max_len, device=self.wte.device)[None]  # every position it will see
            cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
            self.cos, self.sin = cos[0].to(self.wte.dtype), sin[0].to(self.wte.dtype)  # (max_len, head_dim)
        self.layers = [
            (_call(b.ln_1), _call(b.attn.qkv), _call(b.attn.out), _call(b.ln_2),
             _call(b.mlp.gate) if b.mlp.swiglu else None, _call(b.mlp.up), _call(b.mlp.down))
            for b in model.blocks
        ]  # fmt: skip
        self.ln_f, self.lm_head = _call(model.ln_f), _call(model.lm_head)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        from lmforge.model.gpt import GPT

        if type(model) is not GPT or model.training:
            return False
        # Direct kernel calls would skip hooks: a hooked model decodes through its modules.
        return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    def __call__(self, token_ids: Tensor, positions: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Logits (B, vocab) of the next token after token_ids (B,) at positions (B,); attn_mask: None, or
        (B, 1, 1, length + 1) bool over the cached keys and this one. Works on (B, C) rows throughout."""
        cache, B, hd = self.cache, token_ids.size(0), self.head_dim
        L = cache.length
        x = torch.embedding(self.wte, token_ids)  # (B, C)
        rope = None
        if self.wpe is not None:
            x = x + torch.embedding(self.wpe, positions)
        else:
            assert self.cos is not None and self.sin is not None
            cos = torch.embedding(self.cos, positions).view(B, 1, 1, hd)
            rope = cos, torch.embedding(self.sin, positions).view(B, 1, 1, hd)
        for (ln_1, qkv, out, ln_2, gate, up, down), k_cache, v_cache in zip(self.layers, cache.k, cache.v):
            heads = qkv(ln_1(x)).view(B, -1, 1, hd)  # (B, nh + 2 nkv, 1, hd): one position, no transpose
            q, k, v = heads.split_with_sizes(self.split, 1)
            if rope is not None:
                q, k = _rotate(q, *rope), _rotate(k, *rope)
            k_cache.narrow(2, L, 1).copy_(k)
            v_cache.narrow(2, L, 1).copy_(v)
            y = F.scaled_dot_product_attention(q, k_cache.narrow(2, 0, L + 1), v_cache.narrow(2, 0, L + 1),
                                               attn_mask=attn_mask, enable_gqa=self.gqa)  # fmt: skip
            x = x + out(y.reshape(B, -1))
            h = ln_2(x)
            h = F.silu(gate(h)) * up(h) if gate is not None else F.gelu(up(h), approximate="tanh")
            x = x + down(h)
        cache.length = L + 1
        return self.lm_head(self.ln_f(x))


def _call(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """A plain Linear or LayerNorm as a direct call of its kernel; any other module through its forward."""
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: torch._C._nn.linear(x, weight, bias)
    if type(module) is nn.LayerNorm:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: torch.layer_norm(x, shape, weight, bias, eps)
    return module.forward


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE as the model's `apply_rope` (x * cos + rotate_half(x) * sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _decode(
    model: GPT,
    rows: list[RowState],
    params: SamplingParams,
    *,
    use_cache: bool,
    eos_ids: set[int],
    generator: torch.Generator | None,
) -> Iterator[list[StreamEvent]]:
    """The per-step loop shared by everything: advances every row by a token, yields the step's events.

    Prefill the left-padded batch once, then feed one token per row per step through the KV cache (or,
    without the cache, the whole sequence again, through the model's forward). Rows that finish are fed
    padding, masked out. The only host sync per step is reading the sampled ids (EOS and stop strings).
    """
    device = _model_device(model)
    block = model.config.block_size
    prompt_ids = [row.prompt_ids for row in rows]
    B, P = len(prompt_ids), max(len(p) for p in prompt_ids)
    new_limit = min(params.max_new_tokens, block - P + 1)  # the last token is sampled, never fed back
    total = P + new_limit - 1  # positions the model ever sees
    pad_id = min(eos_ids) if eos_ids else 0

    with torch.inference_mode():
        tokens = torch.full((B, total + 1), pad_id, dtype=torch.long, device=device)
        mask = torch.ones((B, total + 1), dtype=torch.bool, device=device)  # real tokens (False: padding)
        for r, ids in enumerate(prompt_ids):
            tokens[r, P - len(ids) : P] = torch.tensor(ids, dtype=torch.long)
            mask[r, : P - len(ids)] = False
        padded = any(len(p) < P for p in prompt_ids)  # then every forward gets the mask
        positions = torch.tensor([len(p) for p in prompt_ids], device=device)  # of the next token
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros((B, model.config.vocab_size), dtype=torch.bool, device=device)
            for r, ids in enumerate(prompt_ids):
                seen[r, torch.tensor(ids, dtype=torch.long, device=device)] = True
        cache = model.new_kv_cache(B, total) if use_cache else None
        fast = FastDecodeStep(model, cache) if cache is not None and FastDecodeStep.supports(model) else None
        hidden = model.forward_hidden(tokens[:, :P], attention_mask=mask[:, :P] if padded else None,
                                      kv_cache=cache)  # fmt: skip
        next_ids = sample_next(model.lm_head(hidden[:, -1]), params, seen, generator)

    alive = B
    for step in range(new_limit):
        chosen = next_ids.tolist()
        events: list[StreamEvent] = []
        finished_now = False
        for r, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            event = row.push(chosen[r], eos_ids, last=step == new_limit - 1)
            event.index = r
            events.append(event)
            if row.finish_reason is not None:
                alive -= 1
                finished_now = True
        yield events
        if alive == 0:
            return
        L = P + step  # where the token just sampled goes
        with torch.inference_mode():
            if finished_now:  # finished rows are padding from here on
                padded = True
                done = torch.tensor([row.finish_reason is not None for row in rows], device=device)
                mask[:, L:] = ~done[:, None]
            if padded:
                next_ids = next_ids.masked_fill(~mask[:, L], pad_id)
            tokens.select(1, L).copy_(next_ids)
            if seen is not None:
                seen.scatter_(1, next_ids[:, None], True)
            if fast is not None:
                assert cache is not None
                if padded:
                    cache.mask[:, L] = mask[:, L]
                    cache.padded = True
                logits = fast(next_ids, positions, cache.mask[:, None, None, : L + 1] if padded else None)
                positions += 1
            else:
                step_mask = (mask[:, L : L + 1] if cache is not None else mask[:, : L + 1]) if padded else None
                step_tokens = tokens[:, L : L + 1] if cache is not None else tokens[:, : L + 1]
                logits = model.lm_head(model.forward_hidden(step_tokens, attention_mask=step_mask,
                                                            kv_cache=cache)[:, -1])  # fmt: skip
            next_ids = sample_next(logits, params, seen, generator)


class RowState:
    """One prompt's progress: its generated tokens, text and finish reason."""

    def __init__(self, prompt_ids: list[int], text: RowText | None) -> None:
        self.prompt_ids = prompt_ids
        self.token_ids: list[int] = []
        self.text = text
        self.finish_reason: FinishReason | None = None

    def push(self, token_id: int, eos_ids: set[int], last: bool) -> StreamEvent | None:
        """Take the sampled token; the event to report (None: nothing to say yet)."""
        if token_id in eos_ids:
            self.finish_reason = "stop"
            return StreamEvent(0, None, self.text.finish() if self.text else "", "stop")
        self.token_ids.append(token_id)
        delta = self.text.add(token_id) if self.text else ""
        if self.text is not None and self.text.stopped:
            self.finish_reason = "stop"
        elif last:
            self.finish_reason = "length"
            delta += self.text.finish() if self.text else ""
        return StreamEvent(0, token_id, delta, self.finish_reason)


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def _eos_set(params: SamplingParams, eos_id: int | Sequence[int] | None) -> set[int]:
    if params.ignore_eos:
        return set()
    ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    return ids | set(params.stop_token_ids)


def _generator(params: SamplingParams, model: GPT) -> torch.Generator | None:
    if params.seed is None or params.greedy:
        return None
    return torch.Generator(device=_model_device(model)).manual_seed(params.seed)


def _prepare(model: GPT, tokenizer: Tokenizer | None, prompts: Sequence[Prompt],
             params: SamplingParams) -> tuple[list[list[int]], list[int]]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings or of token-id lists, not one string")
    fitted = [fit_prompt(ids, model.config.block_size, params.max_new_tokens, i)
              for i, ids in enumerate(encode_prompts(tokenizer, prompts))]  # fmt: skip
    return [ids for ids, _ in fitted], [cut for _, cut in fitted]


def _new_rows(prompt_ids: list[list[int]], tokenizer: Tokenizer | None, params: SamplingParams,
              detokenize: bool) -> list[RowState]:
    """Row states; with `detokenize`, each decodes its text as it goes (streaming, stop strings)."""
    return [RowState(ids, RowText(tokenizer, params.stop) if detokenize and tokenizer else None)
            for ids in prompt_ids]  # fmt: skip


class _Evaluating:
    """Eval mode (no dropout) for the duration of a generation, restoring the model's mode after."""

    def __init__(self, model: GPT) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def stream(model: GPT, tokenizer: Tokenizer | None, prompts: Sequence[Prompt], params: SamplingParams, *,
           use_cache: bool = True, eos_id: int | Sequence[int] | None = None) -> Iterator[StreamEvent]:
    """Events as tokens are sampled, all prompts decoded as one batch: every new token of every row, with
    the text it completes; each row's last event carries its finish_reason."""
    ids, _ = _prepare(model, tokenizer, prompts, params)
    rows = _new_rows(ids, tokenizer, params, detokenize=True)
    with _Evaluating(model):
        for events in _decode(model, rows, params, use_cache=use_cache, eos_ids=_eos_set(params, eos_id),
                              generator=_generator(params, model)):  # fmt: skip
            yield from events


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: Prompt, params: SamplingParams, *,
                use_cache: bool = True, eos_id: int | Sequence[int] | None = None) -> Iterator[str]:
    """The text of one prompt's completion, piece by piece, as it is decoded (whole characters only)."""
    for event in stream(model, tokenizer, [prompt], params, use_cache=use_cache, eos_id=eos_id):
        if event.text:
            yield event.text


def generate(model: GPT, tokenizer: Tokenizer | None, prompts: Sequence[Prompt], params: SamplingParams, *,
             use_cache: bool = True, eos_id: int | Sequence[int] | None = None,
             batch_size: int | None = None) -> list[Completion]:
    """A completion per prompt (text prompts, or lists of token ids), decoded `batch_size` at a time (None:
    all together). Text is decoded once at the end unless there are stop strings to watch for."""
    ids, cuts = _prepare(model, tokenizer, prompts, params)
    eos_ids, generator = _eos_set(params, eos_id), _generator(params, model)
    size = batch_size or len(ids)
    completions: list[Completion] = []
    with _Evaluating(model):
        for start in range(0, len(ids), size):
            rows = _new_rows(ids[start : start + size], tokenizer, params, detokenize=bool(params.stop))
            for _events in _decode(model, rows, params, use_cache=use_cache, eos_ids=eos_ids,
                                   generator=generator):  # fmt: skip
                pass
            for i, row in enumerate(rows):
                if row.text is not None:
                    text = row.text.text
                elif tokenizer is not None:
                    text = tokenizer.decode(row.token_ids, skip_special_tokens=True)
                else:
                    text = ""
                assert row.finish_reason is not None
                completions.append(Completion(row.prompt_ids, row.token_ids, text, row.finish_reason,
                                              cuts[start + i]))  # fmt: skip
    return completions


# ---------------------------------------------------------------------------------------------------------
# `lmforge generate`
# ---------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"generate.device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"generate.device={name}, but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# Below this much work per decode step (parameters x rows decoded together) a step's operations are too small
# to share between threads: one thread is faster (and on a busy machine, far faster: every parallel region
# waits for all its threads to be scheduled). Above it - a bigger model, or a small one decoding a batch -
# the matmuls are big enough to split, and torch's default (all cores) wins.
SMALL_MODEL_PARAMS = 5_000_000


def auto_threads(num_params: int, rows: int = 1) -> int | None:
    """Threads for decoding `rows` sequences at once on a CPU: 1 below SMALL_MODEL_PARAMS of work per step,
    else None (leave torch's default)."""
    return 1 if num_params * max(rows, 1) < SMALL_MODEL_PARAMS else None


def load_for_generation(gc: GenerateConfig, rows: int = 1) -> LoadedModel:
    """The model named by generate.model on the configured device, dtype and threads.

    Threads: generate.threads, else `auto_threads` for `rows` sequences decoded together on a CPU. The seam
    for what comes later: fine-tuned checkpoints and LoRA adapters load through `load_model`.
    """
    from lmforge.infer.load import load_model

    if not gc.model:
        raise ConfigError("no model given: lmforge generate MODEL (a checkpoint, run or Hugging Face dir)")
    if gc.threads is not None:
        if gc.threads < 1:
            raise ConfigError(f"generate.threads must be at least 1, got {gc.threads}")
        torch.set_num_threads(gc.threads)
    if gc.batch_size < 1:
        raise ConfigError(f"generate.batch_size must be at least 1, got {gc.batch_size}")
    device = resolve_device(gc.device)
    loaded = load_model(gc.model, device=device, dtype=resolve_dtype(gc.dtype, device))
    if gc.threads is None and device.type == "cpu" and auto_threads(loaded.model.num_params(), rows) == 1:
        torch.set_num_threads(1)
    return loaded


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line of a .txt file (blank lines skipped), or the "prompt" (or "text") of each
    .jsonl record."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"prompts file not found: {path}")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LmforgeError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise LmforgeError(f"{path}:{n}: expected an object with a \"prompt\" string")
        prompts.append(text)
    return prompts


def run_generate(cfg: Config, stream_output: bool = False, as_json: bool = False) -> list[Completion]:
    """`lmforge generate`: complete every prompt and print the completions (or stream them as they come)."""
    gc = cfg.generate
    params = SamplingParams.from_config(gc)  # bad values fail before the model loads
    prompts = list(gc.prompt) + (read_prompts_file(gc.prompts_file) if gc.prompts_file else [])
    if not prompts:
        raise LmforgeError("no prompt given: use --prompt TEXT (or generate.prompts_file=FILE)")
    for i, p in enumerate(prompts):
        if not p:
            raise LmforgeError(f"prompt {i + 1} is empty")
    loaded = load_for_generation(gc, rows=1 if stream_output else min(gc.batch_size, len(prompts)))
    if loaded.tokenizer is None:
        raise LmforgeError(f"{loaded.source}: no tokenizer.json found beside the model")
    model, tok, out = loaded.model, loaded.tokenizer, sys.stdout
    started = time.perf_counter()
    completions: list[Completion] = []
    if stream_output:
        for i, prompt in enumerate(prompts):
            if len(prompts) > 1:
                out.write(f"{'' if i == 0 else chr(10)}### prompt {i + 1}\n")
            out.write(prompt)
            out.flush()
            for delta in stream_text(model, tok, prompt, params, use_cache=gc.use_cache, eos_id=loaded.eos_id):
                out.write(delta)
                out.flush()
            out.write("\n")
    else:
        completions = generate(model, tok, prompts, params, use_cache=gc.use_cache, eos_id=loaded.eos_id,
                               batch_size=gc.batch_size)  # fmt: skip
        for i, (prompt, c) in enumerate(zip(prompts, completions)):
            if as_json:
                record = {"prompt": prompt, "text": c.text, "finish_reason": c.finish_reason,
                          "prompt_tokens": len(c.prompt_ids), "completion_tokens": len(c.token_ids)}  # fmt: skip
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            if len(prompts) > 1:
                out.write(f"{'' if i == 0 else chr(10)}### prompt {i + 1}\n")
            out.write(prompt + c.text + "\n")
    out.flush()
    n = sum(len(c.token_ids) for c in completions)
    if completions:
        log.debug("%d tokens in %.2f s", n, time.perf_counter() - started)
    return completions
