"""Text generation from an ONNX export with onnxruntime, tokenizers and numpy alone (no PyTorch).

    lm = OnnxLM("runs/shk-onnx")            # an export directory, or a .onnx file with tokenizer.json beside it
    lm.generate("ROMEO:", max_new_tokens=50, temperature=0)              # greedy
    lm.generate("ROMEO:", 50, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    logits = lm.logits(np.array([[1, 2, 3]]))                           # (batch, seq, vocab)

With the KV-cache graph beside the plain one (`model_with_past.onnx`, see lmforge/export/onnx.py) the prompt
is prefilled once and each new token costs one step over one token; without it every step reruns the whole
sequence. Context: as `lmforge generate`, a prompt is cut from the left to leave room for
min(max_new_tokens, block_size // 2) new tokens, and generation stops when block_size positions are used.
Greedy decoding gives the same tokens as `lmforge.infer.generate` with temperature 0.

This module must not import torch: it is what a deployment with only onnxruntime runs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.errors import ConfigError, LmforgeError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.config import Config

log = logging.getLogger("lmforge")

FULL_GRAPH = "model.onnx"
META_PREFIX = "lmforge."
UNLIMITED_CONTEXT = 1 << 30  # a foreign graph without lmforge metadata: no known block size


def is_onnx_model(path: str | Path | None) -> bool:
    """Whether `path` is an .onnx file or a directory holding model.onnx (an ONNX export)."""
    if not path:
        return False
    path = Path(path)
    return (path.is_file() and path.suffix == ".onnx") or (path.is_dir() and (path / FULL_GRAPH).is_file())


def _with_past_name(name: str) -> str:
    stem, _, rest = name.partition(".")
    return f"{stem}_with_past.{rest}"


@dataclass
class OnnxCompletion:
    text: str
    token_ids: list[int]  # generated, without the EOS
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_ids: list[int]  # as the model saw them (after any cut)


class OnnxLM:
    """A causal LM in ONNX: `.logits`, `.generate`, `.stream`, `.tokenizer`, `.block_size`, `.eos_id`."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():
            path = path / FULL_GRAPH
        if not path.is_file():
            raise LmforgeError(f"no ONNX model at {path}")
        if path.suffix != ".onnx":
            raise LmforgeError(f"{path} is not an .onnx file")
        self.path = path
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = threads
        self._options, self._providers = options, list(providers or ["CPUExecutionProvider"])
        self.session = self._open(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.input_names[:1] != ["input_ids"]:
            raise LmforgeError(f"{path}: expected an 'input_ids' input, found {self.input_names}")

        block = self.metadata.get("block_size", str(UNLIMITED_CONTEXT))
        if not block.isdigit():
            raise LmforgeError(f"{path}: metadata lmforge.block_size is {block!r}, not a number")
        self.block_size = int(block)
        self.tokenizer: Tokenizer | None = None
        self.tokenizer_config: dict[str, Any] = {}
        tok_file = path.parent / "tokenizer.json"
        if tok_file.is_file():
            from tokenizers import Tokenizer

            try:
                self.tokenizer = Tokenizer.from_file(str(tok_file))
            except Exception as exc:  # the Rust side raises a bare Exception for a malformed file
                raise LmforgeError(f"{tok_file}: not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
            config_file = path.parent / "tokenizer_config.json"
            if config_file.is_file():
                try:
                    self.tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise LmforgeError(f"{config_file}: not valid JSON ({exc})") from None
        self.eos_id = self._eos_id()
        # The KV-cache graph: named in the metadata, else found by the naming rule; opened on first use.
        past_name = self.metadata.get("with_past") or _with_past_name(path.name)
        self.with_past_path: Path | None = path.parent / past_name if (path.parent / past_name).is_file() else None
        if len(self.input_names) > 2:  # given the KV graph itself: it serves both
            self.with_past_path = path
        self._past_session: Any = self.session if self.with_past_path == path else None

    def _open(self, path: Path) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), self._options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LmforgeError(f"{path}: onnxruntime cannot load it ({first})") from None

    def _eos_id(self) -> int | None:
        if self.metadata.get("eos_id", "").lstrip("-").isdigit():
            return int(self.metadata["eos_id"])
        token = self.tokenizer_config.get("eos_token")
        if isinstance(token, dict):
            token = token.get("content")
        if self.tokenizer is not None and isinstance(token, str):
            return self.tokenizer.token_to_id(token)
        return None

    @property
    def past_session(self) -> Any:
        """The KV-cache graph's session (None without one)."""
        if self._past_session is None and self.with_past_path is not None:
            self._past_session = self._open(self.with_past_path)
        return self._past_session

    # -- forward -------------------------------------------------------------------------------------------

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Logits (B, T, vocab) float32 of input_ids (B, T); attention_mask (B, T): 1 real, 0 (left) padding."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        feed: dict[str, np.ndarray] = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = mask
        if len(self.input_names) > 2:  # the KV graph: empty caches
            feed.update(self._empty_caches(ids.shape[0]))
        return self.session.run(["logits"], feed)[0]

    def _empty_caches(self, batch: int) -> dict[str, np.ndarray]:
        session = self.past_session
        caches = {}
        for value in session.get_inputs()[2:]:
            shape = [batch, value.shape[1], 0, value.shape[3]]
            caches[value.name] = np.zeros(shape, dtype=np.float16 if "float16" in value.type else np.float32)
        return caches

    # -- generation ----------------------------------------------------------------------------------------

    def _token_steps(self, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None, seed: int | None) -> Iterator[int]:  # fmt: skip
        """Sampled token ids, one per step (at most max_new_tokens, within block_size); the caller stops."""
        rng = np.random.default_rng(seed)
        limit = min(max_new_tokens, self.block_size - len(prompt_ids) + 1)
        ids = np.asarray([prompt_ids], dtype=np.int64)
        session = self.past_session
        if session is None:  # no cache: rerun the whole sequence every step
            for _ in range(limit):
                token = sample(self.logits(ids)[0, -1], temperature, top_k, top_p, rng)
                yield token
                ids = np.concatenate([ids, [[token]]], axis=1)
            return
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self._empty_caches(1)}
        cache_names = [v.name for v in session.get_inputs()[2:]]
        for step in range(limit):
            logits, *presents = session.run(None, feed)
            token = sample(logits[0, -1], temperature, top_k, top_p, rng)
            yield token
            if step == limit - 1:
                return
            total = feed["attention_mask"].shape[1] + 1
            feed = {"input_ids": np.asarray([[token]], dtype=np.int64),
                    "attention_mask": np.ones((1, total), dtype=np.int64), **dict(zip(cache_names, presents))}  # fmt: skip

    def fit_prompt(self, prompt: str | Sequence[int], max_new_tokens: int) -> list[int]:
        """The prompt's token ids, cut from the left to leave room for min(max_new_tokens, block_size // 2)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise LmforgeError(f"{self.path.parent}: no tokenizer.json beside the model, so text cannot be encoded")
            ids = self.tokenizer.encode(prompt).ids
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise LmforgeError("the prompt is empty")
        room = self.block_size - max(1, min(max_new_tokens, self.block_size // 2))
        if len(ids) > room:
            log.warning("prompt: %d tokens leave too little room in the model's context of %d; dropping its "
                        "first %d tokens", len(ids), self.block_size, len(ids) - room)  # fmt: skip
            ids = ids[len(ids) - room :]
        return ids

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: Sequence[str] = ()) -> Iterator[str]:  # fmt: skip
        """The completion's text piece by piece (whole characters; text that may begin a stop string is held
        back until it is known not to be one)."""
        for piece in self._run(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop):
            if isinstance(piece, str):
                yield piece

    def complete(self, prompt: str | Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Sequence[str] = ()) -> OnnxCompletion:  # fmt: skip
        """The completion with its token ids and finish reason."""
        for piece in self._run(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop):
            if isinstance(piece, OnnxCompletion):
                return piece
        raise AssertionError("unreachable: _run always ends with the completion")

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = ()) -> str:
        """The text that follows `prompt` (without the prompt): temperature 0 is greedy; stops at EOS, a stop
        string (left out), max_new_tokens or the context's end."""
        return self.complete(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop).text

    def _run(self, prompt: str | Sequence[int], max_new_tokens: int, temperature: float, top_k: int | None,
             top_p: float | None, seed: int | None, stop: Sequence[str]) -> Iterator[str | OnnxCompletion]:
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if self.tokenizer is None:
            raise LmforgeError(f"{self.path.parent}: no tokenizer.json beside the model")
        prompt_ids = self.fit_prompt(prompt, max_new_tokens)
        tokens: list[int] = []
        text = _Text(self.tokenizer, stop)
        reason = "length"
        for token in self._token_steps(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed):
            if token == self.eos_id:
                reason = "stop"
                break
            tokens.append(token)
            delta = text.add(token)
            if delta:
                yield delta
            if text.stopped:
                reason = "stop"
                break
        if not text.stopped:
            delta = text.finish()
            if delta:
                yield delta
        yield OnnxCompletion(text.shown_text, tokens, reason, prompt_ids)


class _Text:
    """A growing completion's text: released only as whole characters, cut at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # all decoded text
        self.shown = 0  # characters of it released
        self.stopped = False

    @property
    def shown_text(self) -> str:
        return self.text[: self.shown]

    def add(self, token: int) -> str:
        self.ids.append(token)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if decoded.endswith("\ufffd"):  # half a character: wait for the rest
            return ""
        self.text = decoded
        return self._release(final=False)

    def finish(self) -> str:
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # a stop string can only start in the part not yet shown: a possible start is always held back
        hits = [i for i in (self.text.find(s, self.shown) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(self.text)
        else:  # hold back a tail that could still grow into a stop string
            held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
            end = max(self.shown, len(self.text) - held)
        delta = self.text[self.shown : end]
        self.shown = max(self.shown, end)
        return delta


# ---------------------------------------------------------------------------------------------------------
# Sampling in numpy
# ---------------------------------------------------------------------------------------------------------


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Bad values are a ConfigError naming the `generate.` key (as SamplingParams does for PyTorch)."""
    checks = [
        ("max_new_tokens", max_new_tokens, max_new_tokens >= 1, "at least 1"),
        ("temperature", temperature, temperature >= 0, "zero (greedy) or positive"),
        ("top_k", top_k, top_k is None or top_k >= 0, "0 (off) or positive"),
        ("top_p", top_p, top_p is None or 0 < top_p <= 1, "in (0, 1]"),
    ]
    for key, value, ok, what in checks:
        if not ok:
            raise ConfigError(f"generate.{key} must be {what}, got {value}")


def sample(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
           rng: np.random.Generator) -> int:  # fmt: skip
    """One token id from a row of logits (vocab,): greedy at temperature 0, else softmax(logits / temperature)
    restricted to the top_k most likely tokens, then to the smallest set holding top_p of the probability."""
    logits = logits.astype(np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k and top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the strictly more likely tokens
        probs[order[before >= top_p]] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


# ---------------------------------------------------------------------------------------------------------
# `lmforge generate MODEL.onnx`
# ---------------------------------------------------------------------------------------------------------


def run_generate_onnx(cfg: Config, stream_output: bool = False, as_json: bool = False) -> list[OnnxCompletion]:
    """`lmforge generate` over an ONNX export: the same prompts, sampling keys and output as with PyTorch.
    repetition_penalty and min_p are not supported here (an error if set)."""
    gc = cfg.generate
    for key, default in (("repetition_penalty", 1.0), ("min_p", 0.0)):
        if getattr(gc, key) != default:
            raise ConfigError(f"generate.{key} is not supported for ONNX models (leave it at {default})")
    check_sampling(gc.max_new_tokens, gc.temperature, gc.top_k, gc.top_p)
    prompts = list(gc.prompt)
    if gc.prompts_file:
        from lmforge.infer.generate import read_prompts_file  # only for a prompts file: it imports torch

        prompts += read_prompts_file(gc.prompts_file)
    if not prompts:
        raise LmforgeError("no prompt given: use --prompt TEXT (or generate.prompts_file=FILE)")
    for i, p in enumerate(prompts):
        if not p:
            raise LmforgeError(f"prompt {i + 1} is empty")
    if gc.threads is not None and gc.threads < 1:
        raise ConfigError(f"generate.threads must be at least 1, got {gc.threads}")
    assert gc.model is not None
    lm = OnnxLM(gc.model, threads=gc.threads)
    if lm.tokenizer is None:
        raise LmforgeError(f"{lm.path.parent}: no tokenizer.json found beside the model")
    out = sys.stdout
    kwargs = {"max_new_tokens": gc.max_new_tokens, "temperature": gc.temperature, "top_k": gc.top_k or None,
              "top_p": gc.top_p, "seed": gc.seed, "stop": gc.stop}  # fmt: skip
    completions = []
    for i, prompt in enumerate(prompts):
        if len(prompts) > 1 and not as_json:
            out.write(f"{'' if i == 0 else chr(10)}### prompt {i + 1}\n")
        if stream_output and not as_json:
            out.write(prompt)
            out.flush()
            for piece in lm.stream(prompt, **kwargs):
                out.write(piece)
                out.flush()
            out.write("\n")
            continue
        c = lm.complete(prompt, **kwargs)
        completions.append(c)
        if as_json:
            record = {"prompt": prompt, "text": c.text, "finish_reason": c.finish_reason,
                      "prompt_tokens": len(c.prompt_ids), "completion_tokens": len(c.token_ids)}  # fmt: skip
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            out.write(prompt + c.text + "\n")
    out.flush()
    return completions
