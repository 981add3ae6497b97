"""The `onnx` export format: the model as ONNX graphs that onnxruntime runs without PyTorch.

One export with `torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter, via onnxscript) of
the decoder with a KV cache, dynamic in batch, new tokens and cached tokens; the plain graph is derived from
it, so both share one weights file:

- `model_with_past.onnx`: input_ids (batch, seq), attention_mask (batch, past + seq; 1 real, 0 padding),
  past_key.{i} / past_value.{i} (batch, n_kv_head, past, head_dim) for every layer i  ->  logits
  (batch, seq, vocab), present_key.{i} / present_value.{i} (batch, n_kv_head, past + seq, head_dim).
  A prompt is prefilled with empty pasts (past = 0), then each step feeds one token and the presents back.
- `model.onnx`: input_ids, attention_mask (batch, seq)  ->  logits: the same graph with the pasts replaced
  by empty tensors and the presents dropped (`full_graph_from_past`).
- `model.onnx.data`: the weights (ONNX external data), read by both graphs.
- with `export.onnx_int8=true`: `model.int8.onnx` + `model_with_past.int8.onnx` + `model.int8.onnx.data`,
  weights quantized to int8 by onnxruntime's dynamic quantization (`quantize_onnx`).
- the tokenizer files, `onnx_report.json` (graphs, sizes, the check's logits differences) and README.md.

Each graph carries `lmforge.*` metadata (block_size, eos_id, vocab_size, flavour, its with-past sibling) so a
lone .onnx file with tokenizer.json beside it is enough for `onnx_runner.OnnxLM`.

After writing, onnxruntime runs both graphs on random tokens of two shapes (one batch left-padded, one
continuing from a cache) and compares the logits with PyTorch's; a difference above `export.onnx_atol`
(1e-4) fails the export.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError, LmforgeError
from lmforge.export.common import plain_model, write_tokenizer_files
from lmforge.model.gpt import GPT, KVCache
from lmforge.runs import atomic_write_json

if TYPE_CHECKING:
    from lmforge.config import ExportConfig
    from lmforge.infer.load import LoadedModel

log = logging.getLogger("lmforge")

FULL_GRAPH = "model.onnx"
REPORT_FILE = "onnx_report.json"
META_PREFIX = "lmforge."
EMPTY_PAST = "lmforge_empty_past"  # the tensor that stands for every past input in the derived plain graph


def with_past_name(name: str) -> str:
    """The file name of the KV-cache graph beside a plain graph: model.onnx -> model_with_past.onnx,
    model.int8.onnx -> model_with_past.int8.onnx."""
    stem, _, rest = name.partition(".")
    return f"{stem}_with_past.{rest}"


def weights_name(name: str) -> str:
    """The external-data file both graphs of a plain graph `name` share: model.onnx -> model.onnx.data."""
    return f"{name}.data"


def graph_bytes(path: Path) -> int:
    """Bytes of an .onnx file plus the external-data files it references."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {path}
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                files.add(path.parent / entry.value)
    return sum(f.stat().st_size for f in files if f.is_file())


# ---------------------------------------------------------------------------------------------------------
# The traced module: the decoder with a cache that grows by concatenation
# ---------------------------------------------------------------------------------------------------------


class ConcatKVCache(KVCache):
    """A KV cache for tracing: each layer's keys/values are the past ones with the new ones appended
    (`torch.cat`) instead of written into a preallocated buffer, so the graph takes the pasts as inputs and
    returns the grown caches as outputs. `GPT.forward_hidden` uses it as any KVCache; `mask` covers
    past + new tokens and is the attention mask the graph is given."""

    def __init__(self, past_keys: Sequence[Tensor], past_values: Sequence[Tensor], attention_mask: Tensor) -> None:
        # No super().__init__(): nothing is preallocated.
        self.k, self.v = list(past_keys), list(past_values)
        self.length = past_keys[0].size(2)
        self.max_len = 2**31 - 1  # the graph's inputs bound the length, not a buffer
        self.mask = torch.ones_like(attention_mask, dtype=torch.bool)
        self.padded = True  # always attend through the mask: no branch on the (symbolic) past length

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k[layer] = torch.cat([self.k[layer], k], dim=2)
        self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]


class DecoderWithPast(nn.Module):
    """(input_ids, attention_mask, past_key.0, past_value.0, ...) -> (logits, present_key.0, present_value.0,
    ...): the model run over new tokens after cached ones."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        cache = ConcatKVCache(past[0::2], past[1::2], attention_mask)
        logits, _ = self.model(input_ids, attention_mask=attention_mask, kv_cache=cache)
        return (logits, *(t for kv in zip(cache.k, cache.v) for t in kv))


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The KV graph's input and output names."""
    past = [f"past_{kind}.{i}" for i in range(n_layer) for kind in ("key", "value")]
    present = [f"present_{kind}.{i}" for i in range(n_layer) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines, warnings and log records are noise on a user's console."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", None)  # None: onnxruntime's quantizer
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_with_past(model: GPT, path: Path, weights_file: str, metadata: dict[str, str]) -> Path:
    """Trace the KV-cache decoder to `path` (weights into `weights_file` beside it); returns `path`."""
    import onnx_ir as ir

    cfg = model.config
    batch, seq, past = 2, 3, 5  # example sizes above 1: torch.export specialises dimensions of size 0 and 1
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    kv_shape = (batch, cfg.n_kv_head, past, cfg.head_dim)
    pasts = tuple(torch.zeros(kv_shape) for _ in range(2 * cfg.n_layer))  # distinct tensors, or they alias
    B = torch.export.Dim("batch", min=1)
    T = torch.export.Dim("seq", min=1, max=cfg.block_size)
    P = torch.export.Dim("past", min=0, max=cfg.block_size)
    dynamic_shapes = {
        "input_ids": {0: B, 1: T},
        "attention_mask": {0: B, 1: torch.export.Dim.AUTO},  # = past + seq, which export works out itself
        "past": tuple({0: B, 2: P} for _ in pasts),
    }
    inputs, outputs = io_names(cfg.n_layer)
    wrapper = DecoderWithPast(model).eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(wrapper, (ids, mask, *pasts), None, dynamo=True, input_names=inputs,
                                        output_names=outputs, dynamic_shapes=dynamic_shapes, optimize=True,
                                        verbose=False)  # fmt: skip
    except Exception as exc:  # the exporter's errors are many pages long; the first line says what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmforgeError(f"onnx export failed: {first}") from exc
    assert program is not None
    onnx_model = program.model
    graph = onnx_model.graph
    graph.inputs[1].shape = ir.Shape([graph.inputs[0].shape[0], "past_plus_seq"])
    # Each node carries the Python stack trace that made it (~1.5 kB a node): debugging aid, not model.
    for node in ir.traversal.RecursiveGraphIterator(graph):
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    onnx_model.metadata_props.update(metadata)
    ir.save(onnx_model, path, external_data=weights_file)
    return path


# ---------------------------------------------------------------------------------------------------------
# Graph surgery: the plain graph from the KV graph
# ---------------------------------------------------------------------------------------------------------


def full_graph_from_past(src: Path, dst: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write at `dst` the graph of `src` (a KV-cache graph) with every past input replaced by an empty
    (batch, n_kv_head, 0, head_dim) tensor and only the logits output: input_ids, attention_mask -> logits.

    The weights stay where `src` keeps them (its external data), so `dst` must be in the same directory."""
    import onnx
    from onnx import TensorProto, helper

    if src.parent.resolve() != dst.parent.resolve():
        raise ValueError("the derived graph shares its weights file: write it beside its source")
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    past = [i for i in graph.input if i.name.startswith("past_")]
    if not past:
        raise LmforgeError(f"{src}: no past_key/past_value inputs (not a KV-cache graph)")
    dims = past[0].type.tensor_type.shape.dim
    n_kv_head, head_dim = dims[1].dim_value, dims[3].dim_value
    elem_type = past[0].type.tensor_type.elem_type
    batch, tail, shape = "lmforge_batch", "lmforge_past_tail", "lmforge_past_shape"
    new_nodes = [
        helper.make_node("Shape", ["input_ids"], [batch], start=0, end=1, name="lmforge_batch_size"),
        helper.make_node("Constant", [], [tail], name="lmforge_past_dims",
                         value=helper.make_tensor(tail, TensorProto.INT64, [3], [n_kv_head, 0, head_dim])),
        helper.make_node("Concat", [batch, tail], [shape], axis=0, name="lmforge_past_shape_concat"),
        helper.make_node("ConstantOfShape", [shape], [EMPTY_PAST], name="lmforge_empty_past",
                         value=helper.make_tensor("zero", elem_type, [1], [0])),
    ]  # fmt: skip
    past_names = {i.name for i in past}
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in past_names:
                node.input[j] = EMPTY_PAST
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name not in past_names]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    mask_dims = graph.input[1].type.tensor_type.shape.dim
    mask_dims[1].Clear()
    mask_dims[1].dim_param = graph.input[0].type.tensor_type.shape.dim[1].dim_param or "seq"
    logits = [o for o in graph.output if o.name == "logits"]
    del graph.output[:]
    graph.output.extend(logits)
    # the value_info of the replaced inputs' users may name shapes with `past`: let runtimes infer them
    del graph.value_info[:]
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata or {})
    props[META_PREFIX + "with_past"] = src.name
    props[META_PREFIX + "graph"] = "full"
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))  # by path: the external weights are found beside it
    return dst


def export_graphs(model: GPT, out_dir: Path, metadata: dict[str, str], name: str = FULL_GRAPH) -> tuple[Path, Path]:
    """model.onnx and model_with_past.onnx (sharing model.onnx.data) in `out_dir`; returns both paths."""
    past_path = out_dir / with_past_name(name)
    meta = {**metadata, META_PREFIX + "graph": "with_past"}
    export_with_past(model, past_path, weights_name(name), meta)
    full_path = full_graph_from_past(past_path, out_dir / name, metadata)
    return full_path, past_path


# ---------------------------------------------------------------------------------------------------------
# The check: onnxruntime against PyTorch
# ---------------------------------------------------------------------------------------------------------


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_cases(block_size: int, with_past: bool) -> list[tuple[int, int, int, int]]:
    """(batch, cached tokens, new tokens, left padding of row 0) of the check's random inputs: for the plain
    graph two shapes, one with a padded row; for the KV graph a prefill and a continuation from a cache."""
    if not with_past:
        long = min(block_size, 19)
        return [(1, 0, min(block_size, 7), 0), (3, 0, long, min(4, long - 1))]
    past = max(0, min(5, block_size - 3))
    return [(2, past, min(3, block_size - past), 0), (1, 0, min(block_size, 4), 0)]


def _inputs(vocab: int, batch: int, past: int, seq: int, pad: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    ids = gen.integers(0, vocab, size=(batch, past + seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask


def _has_past(session: Any) -> bool:
    return len(session.get_inputs()) > 2


def run_graph(session: Any, ids: np.ndarray, mask: np.ndarray, past: int) -> np.ndarray:
    """Logits of the last ids.shape[1] - past tokens: the plain graph in one call (past = 0 only), or the
    KV graph prefilling `past` tokens from empty caches and continuing with the rest."""
    if not _has_past(session):
        return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    kv_inputs = session.get_inputs()[2:]
    n_kv_head, head_dim = kv_inputs[0].shape[1], kv_inputs[0].shape[3]
    caches = [np.zeros((ids.shape[0], n_kv_head, 0, head_dim), np.float32) for _ in kv_inputs]
    logits = None
    for start, end in ((0, past), (past, ids.shape[1])):
        if end == start:
            continue
        feed = {"input_ids": ids[:, start:end], "attention_mask": mask[:, :end]}
        feed.update({i.name: c for i, c in zip(kv_inputs, caches)})
        logits, *caches = session.run(None, feed)
    assert logits is not None
    return logits


def compare_with_torch(model: GPT, graphs: dict[str, Path], seed: int = 0) -> list[dict[str, Any]]:
    """Each graph's logits against PyTorch's on its check cases: a row per graph and case."""
    cfg = model.config
    rows = []
    for name, path in graphs.items():
        session = _session(path)
        for i, (batch, past, seq, pad) in enumerate(check_cases(cfg.block_size, _has_past(session))):
            ids, mask = _inputs(cfg.vocab_size, batch, past, seq, pad, seed + i)
            with torch.no_grad():
                expected, _ = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask) if pad else None)
            got = run_graph(session, ids, mask, past)
            diff = float(np.abs(got - expected[:, past:].numpy()).max())
            rows.append({"graph": name, "batch": batch, "past": past, "seq": seq, "padded_rows": int(pad > 0),
                         "max_abs_diff": diff})  # fmt: skip
    return rows


def compare_graphs(reference: Sequence[Path], other: Sequence[Path], vocab: int, block_size: int,
                   seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Graphs (int8) against their counterparts (fp32) on the check cases: the largest logits difference
    and the fraction of real positions where the most likely next token is the same."""
    diffs, agree, total = [], 0, 0
    for ref_path, path in zip(reference, other):
        ref_session, session = _session(ref_path), _session(path)
        for i, (batch, past, seq, pad) in enumerate(check_cases(block_size, _has_past(session))):
            ids, mask = _inputs(vocab, batch, past, seq, pad, seed + i)
            a, b = run_graph(ref_session, ids, mask, past), run_graph(session, ids, mask, past)
            real = mask[:, past:].astype(bool)
            diffs.append(float(np.abs(a - b).max()))
            agree += int((a.argmax(-1) == b.argmax(-1))[real].sum())
            total += int(real.sum())
    return {"max_abs_diff": max(diffs), "top1_agreement": agree / total}


# ---------------------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------------------

TWO_GB = 2**31 - 1  # protobuf's limit: larger models keep their weights in external data


def _quantize_file(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = graph_bytes(src) > TWO_GB // 2  # int8 is ~1/4 of fp32, but the quantizer holds both
    with _quiet_exporter():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=large)


def quantize_onnx(src: Path, dst: Path) -> Path:
    """`dst`: the ONNX graph `src` with its weights quantized to int8 (onnxruntime's dynamic quantization:
    int8 weights, activations quantized on the fly per batch); returns `dst`.

    For an lmforge export (`src` names its KV-cache sibling in its metadata) the sibling is quantized too
    and `dst` derived from it, as for the fp32 pair: dst, dst's with-past sibling and `<dst>.data`."""
    import onnx

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise LmforgeError(f"no such ONNX model: {src}")
    try:
        meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    except Exception as exc:
        raise LmforgeError(f"{src}: not an ONNX model ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if dst.resolve() == src.resolve():
        raise LmforgeError(f"quantize_onnx: the output {dst} would replace its input")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sibling = meta.get(META_PREFIX + "with_past")
    if not sibling or not (src.parent / sibling).is_file():
        _quantize_file(src, dst)
        return dst
    # The pair: quantize the KV graph, move its weights into dst's shared data file, derive the plain graph.
    past_dst = dst.parent / with_past_name(dst.name)
    tmp = dst.parent / f".{past_dst.name}.tmp"
    try:
        _quantize_file(src.parent / sibling, tmp)
        model = onnx.load(str(tmp))
        extra = {META_PREFIX + "weights": "int8 (dynamic quantization, per channel)"}
        props = {p.key: p.value for p in model.metadata_props} | extra
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(past_dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=weights_name(dst.name), size_threshold=1024)  # fmt: skip
        shutil.copymode(past_dst, dst.parent / weights_name(dst.name))  # onnx creates it owner-only
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)
    return full_graph_from_past(past_dst, dst, extra)


# ---------------------------------------------------------------------------------------------------------
# The export format
# ---------------------------------------------------------------------------------------------------------


def graph_metadata(loaded: LoadedModel, model: GPT) -> dict[str, str]:
    cfg = model.config
    values: dict[str, Any] = {"block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
                              "flavour": cfg.flavour, "eos_id": loaded.eos_id, "source": str(loaded.source)}  # fmt: skip
    return {META_PREFIX + k: str(v) for k, v in values.items() if v is not None}


def export_onnx(loaded: LoadedModel, out_dir: Path, ec: ExportConfig) -> list[Path]:
    """Write the ONNX graphs, the tokenizer files and onnx_report.json into `out_dir`; return them.
    Raises LmforgeError when onnxruntime's logits differ from PyTorch's by more than ec.onnx_atol."""
    if ec.dtype != "fp32":
        raise ConfigError(f"export.dtype={ec.dtype}: the onnx format is written in fp32 "
                          "(export.onnx_int8=true adds an int8 copy)")  # fmt: skip
    if ec.onnx_atol < 0:
        raise ConfigError(f"export.onnx_atol must be zero or positive, got {ec.onnx_atol}")
    model = plain_model(loaded).float().eval()
    cfg = model.config
    started = time.perf_counter()
    full, past = export_graphs(model, out_dir, graph_metadata(loaded, model))
    export_seconds = time.perf_counter() - started
    files = [full, past, out_dir / weights_name(FULL_GRAPH)]
    files += write_tokenizer_files(loaded, out_dir, cfg.block_size)

    cases = compare_with_torch(model, {full.name: full, past.name: past})
    worst = max(row["max_abs_diff"] for row in cases)
    report: dict[str, Any] = {
        "format": "onnx",
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset": _opset(full),
        "graphs": {full.name: _io(full), past.name: _io(past)},
        "weights": {"file": weights_name(FULL_GRAPH), "bytes": (out_dir / weights_name(FULL_GRAPH)).stat().st_size},
        "export_seconds": round(export_seconds, 2),
        "check": {"atol": ec.onnx_atol, "max_abs_diff": worst, "passed": worst <= ec.onnx_atol, "cases": cases},
    }
    if worst > ec.onnx_atol:
        raise LmforgeError(f"onnx check failed: onnxruntime's logits differ from PyTorch's by {worst:.3g} "
                           f"(> export.onnx_atol={ec.onnx_atol:g})")  # fmt: skip
    log.info(f"onnx: onnxruntime vs PyTorch logits: max |diff| {worst:.2e} over {len(cases)} checks "
             f"(limit {ec.onnx_atol:g})")  # fmt: skip

    if ec.onnx_int8:
        int8 = quantize_onnx(full, out_dir / "model.int8.onnx")
        int8_past = out_dir / with_past_name(int8.name)
        files += [int8, int8_past, out_dir / weights_name(int8.name)]
        versus_fp32 = compare_graphs([full, past], [int8, int8_past], cfg.vocab_size, cfg.block_size)
        fp32_bytes, int8_bytes = graph_bytes(full), graph_bytes(int8)
        report["int8"] = {
            "file": int8.name,
            "method": "onnxruntime.quantization.quantize_dynamic (QInt8 weights, per channel)",
            "bytes": int8_bytes,
            "fp32_bytes": fp32_bytes,
            "size_ratio": round(int8_bytes / fp32_bytes, 4),
            "max_abs_diff_vs_fp32": versus_fp32["max_abs_diff"],
            "top1_agreement_vs_fp32": round(versus_fp32["top1_agreement"], 4),
        }
        log.info(f"onnx: int8 copy {int8_bytes / 1e6:.2f} MB ({int8_bytes / fp32_bytes:.0%} of fp32), "
                 f"max |diff| vs fp32 {versus_fp32['max_abs_diff']:.3g}")  # fmt: skip
    atomic_write_json(out_dir / REPORT_FILE, report)
    files.append(out_dir / REPORT_FILE)
    return files


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _io(path: Path) -> dict[str, Any]:
    """The graph's inputs and outputs with their element types and shapes (named dims as strings)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out[v.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def read_report(out_dir: Path) -> dict[str, Any] | None:
    """onnx_report.json of an ONNX export directory, if there is one."""
    path = Path(out_dir) / REPORT_FILE
    if not path.is_file():
        return None
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        return json.loads(path.read_text(encoding="utf-8"))
    return None
