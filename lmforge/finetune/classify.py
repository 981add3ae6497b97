"""Text classification over our decoder: a Linear head on the pooled hidden states (`pooling`: the last real
token's state, the mean or the max over real tokens, or `concat`: those three side by side, as ULMFiT).

`ClassifierModel(gpt, num_labels, pooling)` is an `nn.Module` whose `forward(idx, targets, attention_mask)`
returns `(logits (B, num_labels), loss)`, so the training loop drives it exactly as it drives the GPT. The
loss is cross-entropy with optional class weights (from label frequencies, "balanced" as scikit-learn:
n / (k * count), or given), or the focal loss (Lin et al., 2017) with exponent `focal_gamma`; at gamma 0
the focal loss is that same weighted cross-entropy. With `lm_loss_weight` > 0, training adds that times the
next-token loss on the text (GPT-1's auxiliary objective); evaluation scores the classification loss alone.

Each text is tokenized, cut to `max_length - 1` tokens, and ends with the EOS token (when the tokenizer
has one), whose state the `last` pooling reads. A classifier checkpoint holds the backbone like any
checkpoint (or, for LoRA, its adapter), plus `classifier_head.safetensors` and `classifier_config.json`
(labels, pooling); `load_classifier` gives it back for inference.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.finetune.records import Record
from lmforge.model.gpt import GPT
from lmforge.train.loop import MicroBatch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.finetune.encoder import EncoderClassifier

log = logging.getLogger("lmforge")

HEAD_FILE = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_config.json"
POOLINGS = ("last", "mean", "max", "concat")
CONCAT_POOLINGS = ("last", "max", "mean")  # what `concat` puts side by side, in this order (ULMFiT's)

# ---------------------------------------------------------------------------------------------------------
# Losses and class weights
# ---------------------------------------------------------------------------------------------------------


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, weight: Tensor | None = None) -> Tensor:
    """sum_i w_{y_i} (1 - p_i)^gamma (-log p_i) / sum_i w_{y_i}, p_i the probability of the true class: at
    gamma 0, `F.cross_entropy(logits, targets, weight)` exactly (the same weighted mean)."""
    log_p = F.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    w = weight[targets] if weight is not None else torch.ones_like(log_p)
    loss = -w * log_p if gamma == 0 else -w * (1 - log_p.exp()).pow(gamma) * log_p
    return loss.sum() / w.sum()


def class_weights(label_ids: Sequence[int], num_labels: int, spec: str | Sequence[float] | None,
                  labels: Sequence[str] | None = None) -> list[float] | None:  # fmt: skip
    """None (unweighted), "balanced" (n / (num_labels * count), as scikit-learn), or the given list."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"finetune.class_weights must be null, 'balanced' or a list, got {spec!r}")
        counts = Counter(label_ids)
        missing = [i for i in range(num_labels) if not counts[i]]
        if missing:
            name = labels[missing[0]] if labels else missing[0]
            raise DataError(f"class_weights=balanced: class '{name}' has no training examples")
        n = len(label_ids)
        return [n / (num_labels * counts[i]) for i in range(num_labels)]
    weights = [float(w) for w in spec]
    if len(weights) != num_labels:
        raise ConfigError(f"finetune.class_weights has {len(weights)} values for {num_labels} classes")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"finetune.class_weights must be non-negative and not all zero, got {weights}")
    return weights


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


def pool_states(hidden: Tensor, attention_mask: Tensor | None, how: str) -> Tensor:
    """(B, T, C) -> (B, C) over each row's real tokens (attention_mask 1; rows padded on either side, or no
    padding when None): the last one's state, the mean, or the max of each feature (padding never wins it)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = attention_mask.to(hidden.device, torch.bool)
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    positions = torch.arange(mask.size(1), device=hidden.device).expand_as(mask)
    last = torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


class ClassifierModel(nn.Module):
    """Our GPT (`backbone`) with a Linear `head` over the pooled final hidden states."""

    def __init__(self, backbone: GPT, num_labels: int, pooling: str = "last",
                 weight: Sequence[float] | None = None, focal_gamma: float = 0.0,
                 lm_loss_weight: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"finetune.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if num_labels < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {num_labels}")
        self.backbone = backbone
        self.config = backbone.config  # for code that reads model.config (block_size, ...)
        self.pooling = pooling
        self.focal_gamma = focal_gamma
        self.lm_loss_weight = lm_loss_weight
        width = backbone.config.n_embd * (len(CONCAT_POOLINGS) if pooling == "concat" else 1)
        self.head = nn.Linear(width, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        w = torch.tensor(weight, dtype=torch.float32) if weight is not None else None
        self.register_buffer("class_weight", w, persistent=False)
        self.eos_id: int | None = None  # how texts were encoded in training (set by load_classifier)
        self.max_length: int | None = None

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, T, C) -> (B, C), or (B, 3C) for concat: ULMFiT's [last, max, mean] side by side."""
        if self.pooling != "concat":
            return pool_states(hidden, attention_mask, self.pooling)
        return torch.cat([pool_states(hidden, attention_mask, how) for how in CONCAT_POOLINGS], dim=-1)

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(logits (B, num_labels), the loss over `targets` (B,) or None). attention_mask (B, T): 1 for
        real tokens; rows may be padded on either side."""
        hidden = self.backbone.forward_hidden(idx, attention_mask)
        logits = self.head(self.pool(hidden, attention_mask)).float()
        loss = None
        if targets is not None:
            loss = focal_loss(logits, targets, self.focal_gamma, self.class_weight)
            if self.training and self.lm_loss_weight > 0:
                loss = loss + self.lm_loss_weight * self.lm_loss(idx, hidden, attention_mask)
        return logits, loss

    def lm_loss(self, idx: Tensor, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Next-token cross-entropy over the text's real tokens: the auxiliary objective of GPT-1 (Radford et
        al., 2018), which keeps the backbone a language model while the head learns (training only)."""
        targets = idx[:, 1:]
        if attention_mask is not None:  # a real token predicted from a real one (rows padded on either side)
            real = attention_mask.to(idx.device, torch.bool)
            targets = targets.masked_fill(~(real[:, 1:] & real[:, :-1]), -100)
        logits = self.backbone.lm_head(hidden[:, :-1]).float()
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        # A batch of one-token texts predicts nothing: 0, where the mean over no tokens would be NaN.
        return total / (targets != -100).sum().clamp(min=1)

    def configure_optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The backbone's groups (trainable parameters only) plus the head: its weight decayed, bias not."""
        groups = self.backbone.configure_optimizer_groups(weight_decay)
        groups[0]["params"] = [*groups[0]["params"], *([self.head.weight] if self.head.weight.requires_grad else [])]
        groups[1]["params"] = [*groups[1]["params"], *([self.head.bias] if self.head.bias.requires_grad else [])]
        return groups

    @torch.no_grad()
    def predict(self, ids: Sequence[Sequence[int]], batch_size: int = 32) -> Tensor:
        """Class probabilities (N, num_labels) of token-id sequences (each already ends with EOS)."""
        device = self.head.weight.device
        out = []
        for i in range(0, len(ids), batch_size):
            x, mask = pad_right(ids[i : i + batch_size], 0)
            logits, _ = self(x.to(device), attention_mask=mask.to(device))
            out.append(logits.softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ClassifyExample:
    ids: list[int]
    label: int
    where: str = ""


def label_set(records: Sequence[Record], label_field: str, given: Sequence[str]) -> list[str]:
    """The given labels, or every label of the training records, sorted (numerically when all are integers)."""
    if given:
        if len(set(given)) != len(given):
            raise ConfigError(f"finetune.labels has a repeated label: {list(given)}")
        return list(given)
    found = {label_text(r, label_field) for r in records}
    if all(v.lstrip("-").isdigit() for v in found):
        return sorted(found, key=int)
    return sorted(found)


def label_text(record: Record, label_field: str) -> str:
    if label_field not in record.fields:
        raise DataError(f"{record.where}: missing field '{label_field}' (finetune.label_field)")
    value = record.fields[label_field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{record.where}: field '{label_field}' is {type(value).__name__}, not a label")
    text = str(value).strip()
    if not text:
        raise DataError(f"{record.where}: empty label (field '{label_field}')")
    return text


def build_classify_examples(records: Sequence[Record], tokenizer: Tokenizer, labels: Sequence[str],
                            text_field: str, label_field: str, max_length: int, eos_id: int | None,
                            skip_bad: bool = False, encode: Callable[[str], tuple[list[int], bool]] | None = None
                            ) -> tuple[list[ClassifyExample], dict[str, int]]:  # fmt: skip
    """Token ids (cut to max_length, EOS last) and label index per record; stats: examples, truncated,
    skipped (bad records, with `skip_bad`; else a bad record raises its one-line DataError).
    `encode(text) -> (ids, cut)` replaces that encoding (an encoder's: [CLS] text [SEP])."""
    index = {label: i for i, label in enumerate(labels)}
    keep = max_length - (1 if eos_id is not None else 0)
    examples, truncated, skipped = [], 0, 0
    for record in records:
        try:
            text, label = _text_and_label(record, text_field, label_field, index)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped += 1
            if skipped <= 5:
                log.warning("skipped: %s", exc)
            continue
        if encode is not None:
            ids, cut = encode(text)
            truncated += cut
            examples.append(ClassifyExample(ids, label, record.where))
            continue
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > keep:
            truncated += 1
            ids = ids[:keep]
        if eos_id is not None:
            ids = [*ids, eos_id]
        examples.append(ClassifyExample(ids, label, record.where))
    return examples, {"examples": len(examples), "truncated": truncated, "skipped": skipped}


def _text_and_label(record: Record, text_field: str, label_field: str, index: dict[str, int]) -> tuple[str, int]:
    label = label_text(record, label_field)
    if label not in index:
        raise DataError(f"{record.where}: label '{label}' is not in the label set {list(index)}")
    if text_field not in record.fields:
        raise DataError(f"{record.where}: missing field '{text_field}' (finetune.text_field)")
    text = record.fields[text_field]
    if not isinstance(text, str):
        raise DataError(f"{record.where}: field '{text_field}' is {type(text).__name__}, not text")
    if not text.strip():
        raise DataError(f"{record.where}: empty text (field '{text_field}')")
    return text, index[label]


def pad_right(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(token ids (B, T), attention mask (B, T)) of right-padded rows."""
    width = max(len(s) for s in ids)
    x = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, s in enumerate(ids):
        x[b, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[b, : len(s)] = 1
    return x, mask


def collate(rows: Sequence[ClassifyExample], pad_id: int) -> MicroBatch:
    x, mask = pad_right([r.ids for r in rows], pad_id)
    return x, torch.tensor([r.label for r in rows], dtype=torch.long), {"attention_mask": mask}


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro-F1 and the rest, from the evaluation stage's metrics (lmforge.eval.metrics)."""
    from lmforge.eval.metrics import classification_metrics

    return classification_metrics([labels[i] for i in y_true], [labels[i] for i in y_pred], list(labels))


@torch.no_grad()
def classify_eval(model: nn.Module, examples: Sequence[ClassifyExample], labels: Sequence[str], pad_id: int,
                  batch_size: int, device: torch.device, autocast: Any) -> dict[str, Any]:  # fmt: skip
    """val_loss (plain cross-entropy), accuracy, macro_f1 and the full metrics over every example."""
    was_training = model.training
    model.eval()
    total, preds = 0.0, []
    try:
        for i in range(0, len(examples), batch_size):
            x, y, extra = collate(examples[i : i + batch_size], pad_id)  # type: ignore[misc]
            with autocast():
                logits, _ = model(x.to(device), attention_mask=extra["attention_mask"].to(device))
            total += float(F.cross_entropy(logits.float(), y.to(device), reduction="sum"))
            preds.extend(logits.argmax(-1).tolist())
    finally:
        model.train(was_training)
    metrics = classification_scores([e.label for e in examples], preds, labels)
    return {"val_loss": total / len(examples), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "details": metrics}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------


def save_head(out_dir: Path, head_state: dict[str, Tensor], config: dict[str, Any]) -> None:
    """classifier_head.safetensors (head.weight/bias as `weight`, `bias`) + classifier_config.json (labels,
    pooling, eos_id, max_length)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
    save_file(state, str(out_dir / HEAD_FILE), metadata={"format": "pt"})
    (out_dir / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_head(ckpt: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((ckpt / HEAD_CONFIG).read_text(encoding="utf-8"))
        state = load_file(str(ckpt / HEAD_FILE))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as exc:
        raise LmforgeError(f"{ckpt}: unreadable classifier head ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("labels"), list):
        raise LmforgeError(f"{ckpt / HEAD_CONFIG}: no 'labels' list")
    return config, state


def find_classifier_checkpoint(path: str | Path) -> Path:
    """A classifier checkpoint directory, or a fine-tuning run's best (else newest good) checkpoint."""
    from lmforge.train import checkpoint as ckpt

    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"no such classifier: {path}")
    if (path / HEAD_CONFIG).is_file():
        return path
    for root in (path / "checkpoints", path):
        best = ckpt.read_pointer(root, "best")
        if best is not None and ckpt.verify(best) is None:
            return best
        found = ckpt.find_good_checkpoint(root)
        if found is not None:
            return found
    raise LmforgeError(f"{path}: no classifier checkpoint ({HEAD_CONFIG}) found")


def is_classifier(path: str | Path) -> bool:
    """A classifier checkpoint, or a fine-tuning run with one (decoder or encoder under a head)."""
    path = Path(path)
    if (path / HEAD_CONFIG).is_file():
        return True
    if not (path / "checkpoints").is_dir():
        return False
    try:
        return (find_classifier_checkpoint(path) / HEAD_CONFIG).is_file()
    except LmforgeError:
        return False


def load_classifier(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[ClassifierModel | EncoderClassifier, Tokenizer, list[str]]:  # fmt: skip
    """(the classifier in eval mode, its tokenizer, its labels) from a checkpoint or a fine-tuning run: a
    decoder's `ClassifierModel`, or an `EncoderClassifier` for a fine-tuned BERT-family encoder."""
    from lmforge.finetune import encoder
    from lmforge.infer.load import load_model
    from lmforge.train.checkpoint import read_json, verify

    ckpt = find_classifier_checkpoint(path)
    problem = verify(ckpt)
    if problem is not None:
        raise LmforgeError(f"classifier checkpoint {ckpt} is bad: {problem}")
    if not (ckpt / HEAD_CONFIG).is_file():
        raise LmforgeError(f"{ckpt}: not a classifier checkpoint (no {HEAD_CONFIG})")
    config, head_state = read_head(ckpt)
    if encoder.is_encoder_checkpoint(read_json(ckpt, "model_config.json")):
        return encoder.load_encoder_classifier(ckpt, config, head_state, device)
    loaded = load_model(ckpt)
    if loaded.tokenizer is None:
        raise LmforgeError(f"{ckpt}: no tokenizer.json with the classifier")
    labels = [str(label) for label in config["labels"]]
    model = ClassifierModel(loaded.model, len(labels), config.get("pooling", "last"))
    try:
        model.head.load_state_dict(head_state)
    except RuntimeError as exc:
        raise LmforgeError(f"{ckpt}: the classifier head does not fit the model ({exc})") from None
    model.eos_id, model.max_length = config.get("eos_id"), config.get("max_length")
    return model.to(device).eval(), loaded.tokenizer, labels


def encode_for_classifier(model: ClassifierModel | EncoderClassifier, tokenizer: Tokenizer,
                          texts: Sequence[str]) -> list[list[int]]:  # fmt: skip
    """Texts as the classifier was trained on them: cut to max_length, EOS appended (an encoder's: its own
    special tokens around the text)."""
    if not isinstance(model, ClassifierModel):
        return model.encode_texts(tokenizer, texts)
    eos = model.eos_id
    keep = (model.max_length or model.config.block_size) - (1 if eos is not None else 0)
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids[:keep]
        out.append([*ids, eos] if eos is not None else ids)
    return out


def classifier_predictor(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64
                         ) -> Callable[[list[str]], list[str]]:  # fmt: skip
    """texts -> predicted labels with a trained classifier (decoder or encoder): the evaluation stage's
    classification seam, `run_evaluate(cfg, predictors={"classify": classifier_predictor(run)})`."""
    model, tokenizer, labels = load_classifier(path, device)

    def predict(texts: list[str]) -> list[str]:
        probs = model.predict(encode_for_classifier(model, tokenizer, texts), batch_size=batch_size)
        return [labels[i] for i in probs.argmax(-1).tolist()]

    return predict
