"""What every task asks of a model: log-likelihoods of token spans, sliding windows, greedy completions.

A `ModelBundle` is the model a task runs on: our `GPT` (from a checkpoint or a Hugging Face directory),
its tokenizer, the device, and the context length an evaluation may use (`max_length`).

`score(bundle, requests)` is the one forward-pass loop: each `Request` is a token sequence that fits in
`max_length` and the number of tokens at its end to score; it returns, per request, the log-probability of
each scored token given everything before it in the sequence, and the greedy (argmax) token at each scored
position. Requests are batched longest first and right-padded: attention is causal, so padding after a
sequence changes nothing before it, and no attention mask is needed. A sequence's last token is never fed
to the model (nothing after it is scored), so a request may hold max_length + 1 tokens, as in
lm-evaluation-harness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.model.gpt import GPT

log = logging.getLogger("lmforge")


@dataclass
class ModelBundle:
    model: GPT
    tokenizer: Tokenizer
    device: torch.device
    eos_id: int | None = None
    max_length: int = 256  # tokens per forward pass (<= the model's block_size)
    batch_size: int = 8
    name: str = ""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens (the tasks add what they need)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


@dataclass
class Request:
    tokens: list[int]  # at most max_length + 1 tokens (the last one is only a target)
    n_scored: int  # score the last n_scored tokens (each needs a token before it: n_scored < len(tokens))


@dataclass
class Scored:
    logprobs: list[float]  # log p(token | everything before it), one per scored token
    greedy_ids: list[int] = field(default_factory=list)  # the argmax token at each scored position

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    def is_greedy(self, targets: Sequence[int]) -> bool:
        return list(targets) == self.greedy_ids


def score(
    bundle: ModelBundle, requests: Sequence[Request], on_done: Callable[[int], None] | None = None
) -> list[Scored]:
    """Log-probabilities of the scored tail of every request (see the module docstring).

    on_done(i) is called as request i finishes (for progress bars)."""
    for i, r in enumerate(requests):
        if not 1 <= r.n_scored < len(r.tokens) or len(r.tokens) > bundle.max_length + 1:
            raise ValueError(
                f"request {i}: {len(r.tokens)} tokens, {r.n_scored} scored, max {bundle.max_length}"
            )
    model, device = bundle.model, bundle.device
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
    results: list[Scored | None] = [None] * len(requests)
    with torch.inference_mode():
        for start in range(0, len(order), bundle.batch_size):
            batch = order[start : start + bundle.batch_size]
            width = len(requests[batch[0]].tokens) - 1  # inputs: every token but the last
            x = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                x[row, : len(requests[i].tokens) - 1] = torch.tensor(
                    requests[i].tokens[:-1], dtype=torch.long
                )
            hidden = model.forward_hidden(x.to(device))
            for row, i in enumerate(batch):
                tokens, k = requests[i].tokens, requests[i].n_scored
                n = len(tokens)
                # Position t predicts token t + 1: the last k tokens are predicted at n-k-1 .. n-2.
                logits = model.lm_head(hidden[row, n - k - 1 : n - 1]).float()
                targets = torch.tensor(tokens[n - k :], dtype=torch.long, device=device)
                logprobs = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
                results[i] = Scored(logprobs.tolist(), logits.argmax(-1).tolist())
                if on_done is not None:
                    on_done(i)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------------------
# Building requests
# ---------------------------------------------------------------------------------------------------------


def rolling_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) windows over a sequence of n_tokens, as in Hugging Face's perplexity guide.

    Windows start every `stride` tokens and hold up to `max_length`; each scores only the tokens past the
    previous window's end (its non-overlapping tail), so every token after the first is scored exactly
    once, with between max_length - stride and max_length - 1 tokens of context (fewer at the start).
    stride < max_length keeps at least one token of context before each scored tail.
    """
    if not 1 <= stride < max_length:
        raise ConfigError(f"eval.stride must be in [1, max_length - 1] = [1, {max_length - 1}], got {stride}")
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        n_scored = end - max(prev_end, begin + 1)
        if n_scored > 0:
            windows.append((begin, end, n_scored))
        prev_end = end
        if end == n_tokens:
            break
    return windows


@dataclass
class PairEncoding:
    context: list[int]
    continuation: list[int]
    truncated: int = 0  # context tokens dropped from the left to fit max_length


def encode_pair(
    bundle: ModelBundle, context: str, continuation: str, truncation: str, where: str
) -> PairEncoding:
    """Tokens of context + continuation the way lm-evaluation-harness does it.

    Trailing spaces of the context move to the continuation; the pair is encoded as one string and the
    continuation is what follows the context's own tokens (so a merge across the boundary is not split). An
    empty context becomes the EOS token. A pair longer than max_length + 1 tokens (the model sees all but
    the last) loses context tokens from the left (truncation='left', counted) or is an error ('error'); a
    continuation that leaves no room for a context token is always an error.
    """
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = bundle.encode(context + continuation)
    ctx = bundle.encode(context) if context else []
    if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary: encode the halves apart
        cont = bundle.encode(continuation)
    else:
        cont = whole[len(ctx) :]
    if not cont:
        raise DataError(f"{where}: the continuation {continuation!r} encodes to no tokens")
    if not ctx:
        if bundle.eos_id is None:
            raise DataError(f"{where}: empty context and the tokenizer has no EOS token to start from")
        ctx = [bundle.eos_id]
    limit = bundle.max_length + 1
    if len(cont) >= limit:
        raise DataError(
            f"{where}: the continuation alone is {len(cont)} tokens; the model's context holds "
            f"{bundle.max_length}"
        )
    cut = max(0, len(ctx) + len(cont) - limit)
    if cut and truncation == "error":
        raise DataError(
            f"{where}: {len(ctx) + len(cont)} tokens do not fit the model's context of {bundle.max_length} "
            f"(set eval.truncation=left to drop the oldest context tokens)"
        )
    return PairEncoding(ctx[cut:], cont, cut)
