"""`lmforge explain`: look inside a model's decision on one text.

- **attention maps**: every layer's and head's attention weights over the prompt (the model computes them
  explicitly only while asked: `Attention.keep_weights`, since SDPA returns none);
- **logit lens**: the final norm and LM head applied to the residual stream after each layer, giving the
  top next-token predictions each layer would make (the last layer's are the model's own);
- **token attributions** of a decision (a classifier's class, or a language model's next token):
  integrated gradients over the input embeddings and occlusion (each token replaced by a baseline token),
  both with Captum, both in units of the target's probability.

`explain_text(...)` returns one JSON-ready dict that the CLI renders (PNG, HTML, ANSI: explain_render.py),
writes as `explain.json`, and the dashboard shows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lmforge.config import Config, ExplainConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.model.gpt import GPT, Attention

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger("lmforge")

METHODS = ("attention", "logit_lens", "attribution")
PAD_TOKEN_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")


@dataclass
class Explainable:
    """A loaded model ready to explain: an LM (`GPT`) or a classifier (a GPT backbone with a head)."""

    kind: str  # "lm" or "classifier"
    model: nn.Module  # GPT, or ClassifierModel
    tokenizer: Tokenizer
    source: Path
    labels: list[str] = field(default_factory=list)  # classifier classes
    special_tokens: dict[str, str] = field(default_factory=dict)  # pad/eos/unk/bos token strings, if known

    @property
    def backbone(self) -> GPT:
        return self.model if isinstance(self.model, GPT) else self.model.backbone


def load_explainable(path: str | Path, device: str | torch.device = "cpu") -> Explainable:
    """A classifier (a checkpoint or fine-tuning run with classifier_config.json), else a language model."""
    from lmforge.finetune.classify import HEAD_CONFIG, find_classifier_checkpoint, load_classifier
    from lmforge.infer.load import load_model

    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such model: {path}")
    try:
        checkpoint: Path | None = find_classifier_checkpoint(path)
    except LmforgeError:
        checkpoint = None
    if checkpoint is not None and (checkpoint / HEAD_CONFIG).is_file():
        model, tokenizer, labels = load_classifier(checkpoint, device)
        specials = _special_tokens(tokenizer, {})
        return Explainable("classifier", model, tokenizer, checkpoint, labels, specials)
    loaded = load_model(path, device=device)
    if loaded.tokenizer is None:
        raise LmforgeError(f"{path}: no tokenizer.json with the model, so text cannot be encoded")
    specials = _special_tokens(loaded.tokenizer, loaded.tokenizer_config)
    return Explainable("lm", loaded.model, loaded.tokenizer, loaded.source, [], specials)


def _special_tokens(tokenizer: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """pad/eos/bos/unk token strings: from tokenizer_config.json, else the usual names in the vocabulary."""
    found: dict[str, str] = {}
    for key in ("pad", "eos", "bos", "unk"):
        token = tokenizer_config.get(f"{key}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            found[key] = token
    if "pad" not in found:
        for name in PAD_TOKEN_NAMES:
            if tokenizer.token_to_id(name) is not None:
                found["pad"] = name
                break
    return found


# ---------------------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    ids: list[int]
    texts: list[str]  # what each token covers of the text (or the token itself, for added special tokens)
    special: list[bool]  # added by the tokenizer/classifier (BOS, EOS): never attributed or occluded
    truncated: int = 0  # tokens dropped to fit


def encode(ex: Explainable, text: str, max_tokens: int) -> Encoded:
    """The text as the model reads it: a classifier's way (cut, EOS appended) or a prompt's (last tokens)."""
    from lmforge.finetune.classify import encode_for_classifier

    if not text:
        raise LmforgeError("nothing to explain: the text is empty (give --prompt TEXT)")
    tok = ex.tokenizer
    if ex.kind == "classifier":
        ids = encode_for_classifier(ex.model, tok, [text])[0]
        enc = tok.encode(text, add_special_tokens=False)
        n_text = min(len(enc.ids), len(ids) - (1 if ex.model.eos_id is not None else 0))
        texts = [_span(text, enc.offsets[i], tok, enc.ids[i]) for i in range(n_text)]
        texts += [tok.id_to_token(i) or "" for i in ids[n_text:]]
        special = [False] * n_text + [True] * (len(ids) - n_text)
        return Encoded(ids, texts, special, truncated=len(enc.ids) - n_text)
    enc = tok.encode(text)
    limit = min(max_tokens, ex.backbone.config.block_size)
    start = max(0, len(enc.ids) - limit)
    ids = enc.ids[start:]
    special = [bool(m) for m in enc.special_tokens_mask[start:]]
    texts = [
        tok.id_to_token(i) or "" if s else _span(text, off, tok, i)
        for i, off, s in zip(ids, enc.offsets[start:], special)
    ]
    if not ids:
        raise LmforgeError("nothing to explain: the text encodes to no tokens")
    return Encoded(ids, texts, special, truncated=start)


def _span(text: str, offsets: tuple[int, int], tok: Tokenizer, token_id: int) -> str:
    start, end = offsets
    return text[start:end] if end > start else (tok.id_to_token(token_id) or "")


# ---------------------------------------------------------------------------------------------------------
# Attention maps and the logit lens
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def keep_attention_weights(model: nn.Module) -> Iterator[list[Attention]]:
    """Make every attention layer compute and keep its weights while inside; forget them after."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.keep_weights = True
    try:
        yield layers
    finally:
        for layer in layers:
            layer.keep_weights, layer.weights = False, None


@torch.no_grad()
def attention_maps(model: GPT, ids: Sequence[int]) -> Tensor:
    """(n_layer, n_head, T, T) attention weights of one sequence: row t is what token t attends to."""
    x = torch.tensor([list(ids)], device=model.wte.weight.device)
    with keep_attention_weights(model) as layers:
        model.forward_hidden(x)
        return torch.stack([layer.weights[0].float().cpu() for layer in layers])


@torch.no_grad()
def residual_streams(model: GPT, ids: Sequence[int]) -> list[Tensor]:
    """The residual stream (T, n_embd) after the embeddings and after each block: n_layer + 1 tensors."""
    captured: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        captured.append(output[0].detach())

    hooks = [model.drop.register_forward_hook(keep)]  # the embeddings (token + position), as block 0 sees them
    hooks += [block.register_forward_hook(keep) for block in model.blocks]
    try:
        model.forward_hidden(torch.tensor([list(ids)], device=model.wte.weight.device))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@torch.no_grad()
def logit_lens(model: GPT, ids: Sequence[int], top_k: int = 5) -> tuple[Tensor, Tensor]:
    """(probabilities, token ids), each (n_layer + 1, T, top_k): the top next-token predictions at every
    position read off the residual stream after the embeddings (row 0) and each block (rows 1..n_layer)
    through the final norm and the LM head. The last row is what the model itself predicts."""
    rows = []
    for hidden in residual_streams(model, ids):
        probs = model.lm_head(model.ln_f(hidden)).float().softmax(dim=-1)
        rows.append(probs.topk(min(top_k, probs.size(-1)), dim=-1))
    return torch.stack([r.values for r in rows]).cpu(), torch.stack([r.indices for r in rows]).cpu()


# ---------------------------------------------------------------------------------------------------------
# Token attributions
# ---------------------------------------------------------------------------------------------------------


def _decision(ex: Explainable) -> Callable[[Tensor], Tensor]:
    """ids (B, T) -> probabilities (B, n): a classifier's classes, or an LM's next token after the text."""
    if ex.kind == "classifier":
        return lambda ids: ex.model(ids)[0].float().softmax(dim=-1)
    return lambda ids: ex.model(ids)[0][:, -1].float().softmax(dim=-1)


def attributions(ex: Explainable, encoded: Encoded, target: int, baseline_id: int,
                 ig_steps: int = 32) -> dict[str, Any]:  # fmt: skip
    """Per-token attributions of the target's probability, by two methods (special tokens score 0):

    - integrated gradients (Sundararajan et al., 2017) over the input embeddings, from the baseline text
      (every token replaced by `baseline_id`) to the text; the scores sum to p(text) - p(baseline), up to
      the integration error `delta`;
    - occlusion: p(text) - p(text with that one token replaced by `baseline_id`).
    """
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    device = ex.backbone.wte.weight.device
    ids = torch.tensor([encoded.ids], device=device)
    keep = torch.tensor([encoded.special], device=device)
    baseline = torch.where(keep, ids, torch.full_like(ids, baseline_id))  # special tokens stay themselves
    forward = _decision(ex)
    was_training = ex.model.training
    ex.model.eval()
    try:
        ig = LayerIntegratedGradients(forward, ex.backbone.wte)
        scores, delta = ig.attribute(ids, baselines=baseline, target=target, n_steps=ig_steps,
                                     internal_batch_size=ig_steps, return_convergence_delta=True)  # fmt: skip
        with torch.no_grad():
            occluded = FeatureAblation(forward).attribute(ids, baselines=baseline, target=target,
                                                          perturbations_per_eval=min(16, len(encoded.ids)))  # fmt: skip
            p_text, p_base = (forward(x)[0, target].item() for x in (ids, baseline))
    finally:
        ex.model.train(was_training)
    ig_scores = scores.sum(dim=-1)[0].masked_fill(keep[0], 0.0)
    return {
        "integrated_gradients": {
            "scores": _rounded(ig_scores.tolist()),
            "delta": round(float(delta.abs().sum()), 6),
            "steps": ig_steps,
        },
        "occlusion": {"scores": _rounded(occluded[0].float().masked_fill(keep[0], 0.0).tolist())},
        "p_text": round(p_text, 6),
        "p_baseline": round(p_base, 6),
    }


def _rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def ranked(scores: Sequence[float], special: Sequence[bool]) -> list[int]:
    """Token positions by score, highest first, special tokens left out."""
    return sorted((i for i in range(len(scores)) if not special[i]), key=lambda i: -scores[i])


# ---------------------------------------------------------------------------------------------------------
# One text, explained
# ---------------------------------------------------------------------------------------------------------


def resolve_methods(kind: str, asked: Sequence[str]) -> list[str]:
    for name in asked:
        if name not in METHODS:
            raise ConfigError(f"explain.methods: unknown method '{name}' (choose from {', '.join(METHODS)})")
    if kind == "classifier" and "logit_lens" in asked:
        raise ConfigError("explain.methods: logit_lens needs a language model; this model is a classifier")
    if asked:
        return [m for m in METHODS if m in asked]
    return ["attention", "attribution"] if kind == "classifier" else list(METHODS)


def _token_id(ex: Explainable, token: str, what: str) -> int:
    token_id = ex.tokenizer.token_to_id(token)
    if token_id is None:
        ids = ex.tokenizer.encode(token, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ConfigError(f"{what}: '{token}' is not one token of this tokenizer ({len(ids)} tokens)")
        token_id = ids[0]
    return token_id


def explain_text(ex: Explainable, text: str, ec: ExplainConfig, methods: Sequence[str] = ()) -> dict[str, Any]:
    """Everything `lmforge explain` shows about one text, JSON-ready."""
    methods = resolve_methods(ex.kind, methods or ec.methods)
    encoded = encode(ex, text, ec.max_tokens)
    tok = ex.tokenizer
    device = ex.backbone.wte.weight.device
    result: dict[str, Any] = {
        "model": {"path": str(ex.source), "kind": ex.kind, "labels": ex.labels,
                  "layers": ex.backbone.config.n_layer, "heads": ex.backbone.config.n_head},
        "text": text,
        "tokens": [{"id": i, "text": t, "special": s} for i, t, s in zip(encoded.ids, encoded.texts, encoded.special)],
        "truncated": encoded.truncated,
        "methods": methods,
    }
    with torch.no_grad():
        probs = _decision(ex)(torch.tensor([encoded.ids], device=device))[0].cpu()
    if ex.kind == "classifier":
        predicted = int(probs.argmax())
        result["prediction"] = {"labels": ex.labels, "probabilities": _rounded(probs.tolist()),
                                "predicted": ex.labels[predicted]}  # fmt: skip
    else:
        top = probs.topk(min(ec.top_k, probs.numel()))
        predicted = int(top.indices[0])
        result["prediction"] = {"next": [{"id": int(i), "token": _shown(tok, int(i)), "prob": round(float(p), 6)}
                                         for p, i in zip(top.values, top.indices)]}  # fmt: skip
    if "attention" in methods:
        weights = attention_maps(ex.backbone, encoded.ids)
        result["attention"] = {"weights": [[[_rounded(row, 3) for row in head] for head in layer]
                                           for layer in weights.tolist()]}  # fmt: skip
    if "logit_lens" in methods:
        values, indices = logit_lens(ex.backbone, encoded.ids, ec.top_k)
        result["logit_lens"] = {
            "layers": ["embed", *(f"layer {i + 1}" for i in range(ex.backbone.config.n_layer))],
            "top": [[[{"id": int(i), "token": _shown(tok, int(i)), "prob": round(float(p), 6)}
                      for p, i in zip(ps, ix)] for ps, ix in zip(layer_p, layer_i)]
                    for layer_p, layer_i in zip(values, indices)],
        }  # fmt: skip
    if "attribution" in methods:
        target = predicted if ec.target is None else _target_index(ex, ec.target)
        baseline = ec.baseline or ex.special_tokens.get("pad") or ex.special_tokens.get("unk")
        if baseline is None:
            raise ConfigError("explain.baseline: the tokenizer has no pad or unk token; name a baseline token")
        baseline_id = _token_id(ex, baseline, "explain.baseline")
        found = attributions(ex, encoded, target, baseline_id, ec.ig_steps)
        target_name = ex.labels[target] if ex.kind == "classifier" else _shown(tok, target)
        result["attribution"] = {"target": target_name, "target_index": target, "baseline": baseline, **found}
    return result


def _target_index(ex: Explainable, target: str) -> int:
    if ex.kind == "classifier":
        if target not in ex.labels:
            raise ConfigError(f"explain.target: '{target}' is not a class of this model ({', '.join(ex.labels)})")
        return ex.labels.index(target)
    return _token_id(ex, target, "explain.target")


def _shown(tok: Tokenizer, token_id: int) -> str:
    """A predicted token as text: decoded (so byte-level BPE shows ' the', not 'Ġthe')."""
    text = tok.decode([token_id], skip_special_tokens=False)
    return text if text else (tok.id_to_token(token_id) or f"#{token_id}")


# ---------------------------------------------------------------------------------------------------------
# The CLI stage
# ---------------------------------------------------------------------------------------------------------


def check_config(ec: ExplainConfig) -> None:
    if not ec.model:
        raise ConfigError("no model given (pass MODEL, or set explain.model)")
    if not ec.prompt:
        raise ConfigError("no text given (pass --prompt TEXT, or set explain.prompt)")
    for key in ("top_k", "ig_steps", "max_tokens"):
        if getattr(ec, key) < 1:
            raise ConfigError(f"explain.{key} must be at least 1, got {getattr(ec, key)}")
    for name in ec.methods:
        if name not in METHODS:
            raise ConfigError(f"explain.methods: unknown method '{name}' (choose from {', '.join(METHODS)})")


def run_explain(cfg: Config, out: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Explain `cfg.explain.prompt` with `cfg.explain.model`; writes explain.json, PNGs and HTML into the
    run directory. Returns (the result, the run directory)."""
    from lmforge.eval import explain_render as render
    from lmforge.runs import atomic_write_json, start_run

    ec = cfg.explain
    check_config(ec)
    device = ec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ex = load_explainable(ec.model, device)
    with start_run("explain", cfg, out) as run:
        run.add_inputs([ex.source])
        result = explain_text(ex, ec.prompt, ec)
        written = []
        if "attention" in result:
            written += render.attention_pngs(run.dir, result)
        if "logit_lens" in result:
            written.append(render.logit_lens_png(run.dir / "logit_lens.png", result))
        if "attribution" in result:
            written.append(render.attribution_html(run.dir / "attribution.html", result))
        atomic_write_json(run.dir / "explain.json", result)
        written.append(run.dir / "explain.json")
        for path in written:
            run.add_output(path)
        run.extra["explain"] = {"kind": ex.kind, "methods": result["methods"], "tokens": len(result["tokens"])}
    if result["truncated"]:
        log.info("explain: %d tokens of the text did not fit and were left out", result["truncated"])
    return result, run.dir

