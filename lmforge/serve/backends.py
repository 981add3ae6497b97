"""What `lmforge serve` serves: a language model behind a batch decoder, or a classifier.

A `BatchDecoder` holds the rows (sequences) the engine is decoding and turns tokens into next-token logits:

- `add(prompts)` prefills new rows, appended after the existing ones, and returns their logits;
- `step(tokens)` feeds one token to every row and returns every row's logits;
- `remove(i)` drops row i; the last row moves into its place (the engine mirrors that move).

`KVBatchDecoder` is our GPT with one shared KV cache of `max_batch_size` rows. Rows are right-aligned: all
rows write their next key at the same cache column `length`, and row r's tokens are the last `positions[r]`
columns before it (everything earlier in the row is masked). A new row is prefilled on its own little cache
and copied in so that it ends at `length` too, so every decode step is one `FastDecodeStep` over all rows,
however far along each is. When the shared columns run out (or too many of them are dead history), the live
columns are moved to the front: a copy, no recomputation.

`OnnxKVBatchDecoder` keeps the same layout for an ONNX export's KV-cache graph (numpy caches that the graph
returns grown by one column per step). `RecomputeBatchDecoder` has no cache (a plain ONNX graph): every step
runs the whole right-padded batch again; causal attention makes right padding harmless, as a position's
logits never see the padding after it.

Loading goes through `lmforge.infer.load.load_model` (lmforge checkpoints and runs, LoRA adapters over their
base, Hugging Face directories, quantized checkpoints), `lmforge.finetune.load_classifier`, and
`lmforge.export.onnx_runner.OnnxLM` for .onnx files.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

    from lmforge.config import ServeConfig
    from lmforge.infer.chat import ChatFormat
    from lmforge.model.gpt import GPT

log = logging.getLogger("lmforge")


class BatchDecoder(Protocol):
    max_batch_size: int

    @property
    def size(self) -> int: ...  # rows held

    def add(self, prompts: Sequence[Sequence[int]]) -> Tensor: ...  # (k, vocab) logits of the new rows

    def step(self, tokens: Sequence[int]) -> Tensor: ...  # (size, vocab) logits after one token per row

    def remove(self, index: int) -> None: ...  # drop a row; the last row takes its index

    def reset(self) -> None: ...  # drop every row


# ---------------------------------------------------------------------------------------------------------
# Our GPT with a shared, right-aligned KV cache
# ---------------------------------------------------------------------------------------------------------


class KVBatchDecoder:
    """Continuous batching over one preallocated KV cache (see the module docstring for the layout)."""

    def __init__(self, model: GPT, max_batch_size: int, max_len: int | None = None) -> None:
        from lmforge.infer.generate import FastDecodeStep
        from lmforge.model.gpt import KVCache

        self.model = model
        self.block_size = model.config.block_size
        self.max_batch_size = max_batch_size
        # Twice the context: a row can always be appended, and moving the live columns left is rare.
        self.max_len = max_len or 2 * self.block_size
        if self.max_len < self.block_size:
            raise ValueError(f"max_len {self.max_len} is below the model's block_size {self.block_size}")
        self.device = model.wte.weight.device
        self.cache = model.new_kv_cache(max_batch_size, self.max_len)
        # The decode step sees the first `size` rows through this view (slices: no copies).
        self.view = KVCache.__new__(KVCache)
        self.view.max_len, self.view.padded = self.max_len, True
        self._set_view(0)
        self.fast = FastDecodeStep(model, self.view) if FastDecodeStep.supports(model) else None
        self.positions: list[int] = []  # real tokens in the cache per row (= the next token's position)
        self.length = 0  # the shared column the next token of every row is written to
        self.moves = 0  # times the live columns were moved (a count for tests and curiosity)

    @property
    def size(self) -> int:
        return len(self.positions)

    def _set_view(self, n: int) -> None:
        cache, view = self.cache, self.view
        view.k, view.v = [k[:n] for k in cache.k], [v[:n] for v in cache.v]
        view.mask = cache.mask[:n]
        self._view_rows = n

    def _set_masks(self, rows: slice) -> None:
        """Row r attends to exactly its last positions[r] columns before `length`."""
        starts = torch.tensor([self.length - p for p in self.positions[rows]], device=self.device)
        columns = torch.arange(self.max_len, device=self.device)
        self.cache.mask[rows] = columns[None, :] >= starts[:, None]

    def _move(self, target: int) -> None:
        """Move the live columns so that `length` becomes `target` (left to reclaim columns, right to make
        room for a longer prompt)."""
        keep = max(self.positions, default=0)
        n, old = self.size, self.length
        if n and keep and target != old:
            for t in (*self.cache.k, *self.cache.v):
                t[:n, :, target - keep : target] = t[:n, :, old - keep : old].clone()
            self.moves += 1
        self.length = target
        self._set_masks(slice(0, n))

    def add(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        k, n = len(prompts), self.size
        if n + k > self.max_batch_size:
            raise ValueError(f"{n + k} rows exceed max_batch_size {self.max_batch_size}")
        lengths = [len(p) for p in prompts]
        P = max(lengths)
        if not 1 <= min(lengths) <= P < self.block_size:
            raise ValueError(f"prompt lengths must be in [1, {self.block_size}), got {lengths}")
        if n == 0:
            self.length = P
        elif self.length < P:
            self._move(P)
        with torch.inference_mode():
            tokens = torch.zeros((k, P), dtype=torch.long, device=self.device)
            mask = torch.ones((k, P), dtype=torch.bool, device=self.device)
            for r, ids in enumerate(prompts):
                tokens[r, P - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
                mask[r, : P - len(ids)] = False
            padded = min(lengths) < P
            scratch = self.model.new_kv_cache(k, P)
            hidden = self.model.forward_hidden(tokens, attention_mask=mask if padded else None, kv_cache=scratch)
            logits = self.model.lm_head(hidden[:, -1])
            L = self.length
            for dst, src in zip((*self.cache.k, *self.cache.v), (*scratch.k, *scratch.v)):
                dst[n : n + k, :, L - P : L] = src
        self.positions.extend(lengths)
        self._set_masks(slice(n, n + k))
        return logits

    def step(self, tokens: Sequence[int]) -> Tensor:
        n = self.size
        if len(tokens) != n or n == 0:
            raise ValueError(f"{len(tokens)} tokens for {n} rows")
        keep = max(self.positions)
        # Reclaim columns when full, or when dead history outgrows the live part (attention reads it all).
        if self.length >= self.max_len or self.length - keep >= max(keep, 32):
            self._move(keep)
        if self._view_rows != n:
            self._set_view(n)
        L = self.length
        with torch.inference_mode():
            self.cache.mask[:n, L] = True
            ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
            positions = torch.tensor(self.positions, dtype=torch.long, device=self.device)
            self.view.length = L
            if self.fast is not None:
                logits = self.fast(ids, positions, self.view.mask[:, None, None, : L + 1])
            else:  # hooked models: through the modules (the view cache carries the mask)
                hidden = self.model.forward_hidden(ids[:, None], kv_cache=self.view, position_ids=positions[:, None])
                logits = self.model.lm_head(hidden[:, -1])
        self.length = L + 1
        self.positions = [p + 1 for p in self.positions]
        return logits

    def remove(self, index: int) -> None:
        last = self.size - 1
        if not 0 <= index <= last:
            raise IndexError(index)
        if index != last:
            L, keep = self.length, self.positions[last]
            with torch.inference_mode():
                for t in (*self.cache.k, *self.cache.v):
                    t[index, :, L - keep : L] = t[last, :, L - keep : L]
            self.positions[index] = keep
            self._set_masks(slice(index, index + 1))
        self.positions.pop()
        if not self.positions:
            self.length = 0

    def reset(self) -> None:
        self.positions, self.length = [], 0


# ---------------------------------------------------------------------------------------------------------
# No cache: recompute the batch every step (ONNX)
# ---------------------------------------------------------------------------------------------------------


class RecomputeBatchDecoder:
    """Rows as token lists; each call runs `logits_fn` on the right-padded batch of every row it needs."""

    def __init__(self, logits_fn: Callable[[np.ndarray], Any], block_size: int, max_batch_size: int) -> None:
        self.logits_fn = logits_fn  # int64 (B, T) -> (B, T, vocab) array
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.rows: list[list[int]] = []

    @property
    def size(self) -> int:
        return len(self.rows)

    def _last_logits(self, rows: Sequence[Sequence[int]]) -> Tensor:
        import numpy as np

        width = max(len(r) for r in rows)
        batch = np.zeros((len(rows), width), dtype=np.int64)  # right padding: invisible to causal attention
        for i, r in enumerate(rows):
            batch[i, : len(r)] = r
        out = np.asarray(self.logits_fn(batch))
        last = np.array([len(r) - 1 for r in rows])
        return torch.from_numpy(np.ascontiguousarray(out[np.arange(len(rows)), last], dtype=np.float32))

    def add(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        if self.size + len(prompts) > self.max_batch_size:
            raise ValueError(f"{self.size + len(prompts)} rows exceed max_batch_size {self.max_batch_size}")
        new = [list(p) for p in prompts]
        logits = self._last_logits(new)
        self.rows.extend(new)
        return logits

    def step(self, tokens: Sequence[int]) -> Tensor:
        if len(tokens) != self.size or not self.rows:
            raise ValueError(f"{len(tokens)} tokens for {self.size} rows")
        for row, token in zip(self.rows, tokens):
            row.append(int(token))
        return self._last_logits(self.rows)

    def remove(self, index: int) -> None:
        self.rows[index] = self.rows[-1]
        self.rows.pop()

    def reset(self) -> None:
        self.rows = []


class OnnxKVBatchDecoder:
    """Continuous batching over an ONNX export's KV-cache graph (`OnnxLM.past_session`), in numpy.

    The same right-aligned layout as `KVBatchDecoder`: every row's cache has the same number of columns,
    a row's tokens are its last ones and the attention mask hides the columns before them (the graph counts
    positions over the mask, as `GPT.forward_hidden` does). The graph returns grown caches each step, so
    joining rows is a concatenation (shorter side padded on the left) and dead columns are sliced off.
    """

    def __init__(self, session: Any, block_size: int, max_batch_size: int) -> None:
        self.session = session
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        inputs = session.get_inputs()
        self.cache_names = [i.name for i in inputs[2:]]
        self.output_names = ["logits", *(o.name for o in session.get_outputs()[1:])]
        self.cache_shapes = [(int(i.shape[1]), int(i.shape[3])) for i in inputs[2:]]  # (n_kv_head, head_dim)
        self.cache_dtypes = [_numpy_dtype(i.type) for i in inputs[2:]]
        self.reset()

    @property
    def size(self) -> int:
        return len(self.positions)

    def reset(self) -> None:
        import numpy as np

        self.caches: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.positions: list[int] = []

    def _empty(self, batch: int, columns: int) -> list[np.ndarray]:
        import numpy as np

        return [np.zeros((batch, heads, columns, dim), dtype=dtype)
                for (heads, dim), dtype in zip(self.cache_shapes, self.cache_dtypes)]  # fmt: skip

    def _run(self, ids: np.ndarray, mask: np.ndarray, caches: list[np.ndarray]) -> tuple[Tensor, list[np.ndarray]]:
        import numpy as np

        feed = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.cache_names, caches))}
        logits, *presents = self.session.run(self.output_names, feed)
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1], dtype=np.float32)), presents

    def add(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        import numpy as np

        k, lengths = len(prompts), [len(p) for p in prompts]
        P = max(lengths)
        if self.size + k > self.max_batch_size:
            raise ValueError(f"{self.size + k} rows exceed max_batch_size {self.max_batch_size}")
        ids = np.zeros((k, P), dtype=np.int64)
        mask = np.zeros((k, P), dtype=np.int64)
        for r, p in enumerate(prompts):
            ids[r, P - len(p) :] = p
            mask[r, P - len(p) :] = 1
        logits, presents = self._run(ids, mask, self._empty(k, 0))
        if not self.positions:
            self.caches, self.mask = presents, mask
        else:
            width = max(self.mask.shape[1], P)
            old = [_left_pad(c, width) for c in self.caches]
            new = [_left_pad(c, width) for c in presents]
            self.caches = [np.concatenate(pair, axis=0) for pair in zip(old, new)]
            self.mask = np.concatenate([_left_pad(self.mask, width), _left_pad(mask, width)], axis=0)
        self.positions.extend(lengths)
        return logits

    def step(self, tokens: Sequence[int]) -> Tensor:
        import numpy as np

        n = self.size
        if len(tokens) != n or n == 0:
            raise ValueError(f"{len(tokens)} tokens for {n} rows")
        dead = self.mask.shape[1] - max(self.positions)  # leading columns no row attends to
        if dead:
            self.caches = [c[:, :, dead:] for c in self.caches]
            self.mask = self.mask[:, dead:]
        mask = np.concatenate([self.mask, np.ones((n, 1), dtype=np.int64)], axis=1)
        ids = np.asarray(tokens, dtype=np.int64)[:, None]
        logits, self.caches = self._run(ids, mask, [np.ascontiguousarray(c) for c in self.caches])
        self.mask = mask
        self.positions = [p + 1 for p in self.positions]
        return logits

    def remove(self, index: int) -> None:
        last = self.size - 1
        if index != last:
            for c in self.caches:
                c[index] = c[last]
            self.mask[index] = self.mask[last]
            self.positions[index] = self.positions[last]
        self.caches = [c[:last] for c in self.caches]
        self.mask = self.mask[:last]
        self.positions.pop()
        if not self.positions:
            self.reset()


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    """Zeros before `a`'s columns (axis 2 of a cache, axis 1 of a mask) up to `width` columns."""
    import numpy as np

    axis = 2 if a.ndim == 4 else 1
    missing = width - a.shape[axis]
    if missing <= 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (missing, 0)
    return np.pad(a, pad)


def _numpy_dtype(onnx_type: str) -> Any:
    import numpy as np

    return np.float16 if "float16" in onnx_type else np.float32


# ---------------------------------------------------------------------------------------------------------
# Served models
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LanguageModel:
    """A model that completes text: its tokenizer, chat format, context, and a way to make a decoder."""

    name: str
    tokenizer: Tokenizer
    tokenizer_config: dict[str, Any]
    block_size: int
    vocab_size: int
    eos_id: int | None
    make_decoder: Callable[[int], BatchDecoder]  # max_batch_size -> a fresh decoder
    kind: str = "lmforge"  # lmforge, hf, lora, onnx, ... (LoadedModel.kind)
    source: str = ""
    num_params: int = 0  # 0: unknown (ONNX)
    model: GPT | None = None  # the torch model (None for ONNX)
    _chat: ChatFormat | None = field(default=None, repr=False)

    @property
    def chat_format(self) -> ChatFormat:
        if self._chat is None:
            from lmforge.infer.chat import ChatFormat

            self._chat = ChatFormat(self.tokenizer, self.tokenizer_config)
        return self._chat


@dataclass
class Classifier:
    """A sequence classifier: texts in, a probability per label out (one forward at a time)."""

    name: str
    model: Any  # lmforge.finetune.ClassifierModel
    tokenizer: Tokenizer
    labels: list[str]
    source: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def block_size(self) -> int:
        return int(self.model.config.block_size)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        from lmforge.finetune.classify import encode_for_classifier

        return encode_for_classifier(self.model, self.tokenizer, texts)

    def probabilities(self, encoded: Sequence[Sequence[int]]) -> list[list[float]]:
        """Softmax over the labels for each encoded text, as the classifier was trained (right padding)."""
        width = max(len(ids) for ids in encoded)
        device = next(self.model.parameters()).device
        idx = torch.zeros((len(encoded), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(encoded), width), dtype=torch.long, device=device)
        for i, ids in enumerate(encoded):
            idx[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            mask[i, : len(ids)] = 1
        with self._lock, torch.inference_mode():
            logits, _ = self.model(idx, attention_mask=mask)
        return logits.float().softmax(dim=-1).tolist()


def model_name(path: str | Path) -> str:
    """The default id of a served model: its directory's (or file's) name, without a checkpoint's step."""
    path = Path(path).resolve()
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        path = path.parent.parent
    return path.stem if path.is_file() else path.name


def is_onnx(path: Path) -> bool:
    """An .onnx file, or a directory with model.onnx (an ONNX export) and no torch weights."""
    return path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()
                                      and not (path / "model.safetensors").is_file())  # fmt: skip


def load_language_model(path: str | Path, base: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, name: str | None = None,
                        threads: int | None = None) -> LanguageModel:  # fmt: skip
    """Any model `lmforge.infer.load.load_model` reads (or an .onnx file), ready to serve."""
    path = Path(path)
    if is_onnx(path):
        if base is not None:
            raise LmforgeError(f"{path}: an ONNX model takes no base (serve.base)")
        return load_onnx(path, name, threads)
    from lmforge.infer.load import load_model

    loaded = load_model(path, device=device, dtype=dtype, base=base)
    if loaded.tokenizer is None:
        raise LmforgeError(f"{loaded.source}: no tokenizer.json found beside the model")
    model = loaded.model
    cfg = model.config
    return LanguageModel(
        name=name or model_name(path), tokenizer=loaded.tokenizer, tokenizer_config=loaded.tokenizer_config,
        block_size=cfg.block_size, vocab_size=cfg.vocab_size, eos_id=loaded.eos_id,
        make_decoder=lambda max_batch: KVBatchDecoder(model, max_batch), kind=loaded.kind, source=str(loaded.source),
        num_params=model.num_params(), model=model,
    )  # fmt: skip


def load_onnx(path: Path, name: str | None = None, threads: int | None = None) -> LanguageModel:
    """An exported ONNX language model through `lmforge.export.onnx_runner.OnnxLM`: batched through its
    KV-cache graph when the export has one, else by recomputing the batch every step."""
    try:
        from lmforge.export.onnx_runner import OnnxLM
    except ImportError as exc:
        raise LmforgeError(f"{path}: serving ONNX models needs onnxruntime ({exc})") from None

    lm = OnnxLM(path, threads=threads)
    if lm.tokenizer is None:
        raise LmforgeError(f"{lm.path}: no tokenizer.json found beside the model")
    block = int(lm.block_size)
    if block >= 1 << 30:
        raise LmforgeError(f"{lm.path}: no lmforge.block_size metadata, so the model's context is unknown")
    vocab = int(lm.metadata.get("vocab_size") or lm.tokenizer.get_vocab_size())
    past = lm.past_session
    if past is not None:
        make: Callable[[int], BatchDecoder] = lambda max_batch: OnnxKVBatchDecoder(past, block, max_batch)  # noqa: E731
    else:
        make = lambda max_batch: RecomputeBatchDecoder(lm.logits, block, max_batch)  # noqa: E731
    return LanguageModel(
        name=name or model_name(path), tokenizer=lm.tokenizer, tokenizer_config=dict(lm.tokenizer_config),
        block_size=block, vocab_size=vocab, eos_id=lm.eos_id, make_decoder=make, kind="onnx", source=str(lm.path),
    )  # fmt: skip


def load_classifier_model(path: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> Classifier:
    from lmforge.finetune import load_classifier

    model, tokenizer, labels = load_classifier(path, device=device)
    return Classifier(name or model_name(path), model, tokenizer, labels, str(path))


@dataclass
class Served:
    """Everything one server answers for: at most one language model and one classifier."""

    lm: LanguageModel | None = None
    classifier: Classifier | None = None

    def names(self) -> list[str]:
        return [m.name for m in (self.lm, self.classifier) if m is not None]


def load_served(sc: ServeConfig) -> Served:
    """The models named by `serve.model` (a language model or a classifier) and `serve.classifier`."""
    from lmforge.infer.generate import auto_threads, resolve_device, resolve_dtype

    if not sc.model and not sc.classifier:
        raise LmforgeError("no model given: lmforge serve MODEL (a checkpoint, run, adapter, HF dir or .onnx file)")
    if sc.threads is not None:
        if sc.threads < 1:
            raise LmforgeError(f"serve.threads must be at least 1, got {sc.threads}")
        torch.set_num_threads(sc.threads)
    device = resolve_device(sc.device)
    dtype = resolve_dtype(sc.dtype, device)
    served = Served()
    if sc.model:
        path = Path(sc.model)
        if not path.exists():
            raise LmforgeError(f"no such model: {path}")
        from lmforge.finetune.classify import is_classifier

        if is_classifier(path):
            served.classifier = load_classifier_model(path, device, sc.model_name)
        else:
            served.lm = load_language_model(path, sc.base, device, dtype, sc.model_name, sc.threads)
    if sc.classifier:
        if served.classifier is not None:
            raise LmforgeError("serve.model is already a classifier; serve.classifier names a second one")
        served.classifier = load_classifier_model(sc.classifier, device)
    if served.lm is not None and served.classifier is not None and served.lm.name == served.classifier.name:
        served.classifier.name += "-classifier"
    # Sized for one stream: a small model keeps one thread even when concurrent requests batch up, as a
    # server on a shared machine must not stall on threads that wait to be scheduled.
    small = served.lm is not None and served.lm.num_params > 0 and auto_threads(served.lm.num_params) == 1
    if sc.threads is None and device.type == "cpu" and small:
        torch.set_num_threads(1)
    return served
