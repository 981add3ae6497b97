"""Encoder classifiers: a Hugging Face BERT-family directory (BERT, RoBERTa, DistilBERT, MiniLM, ...)
fine-tuned for classification through transformers' own model classes, driven by lmforge's recipe.

    lmforge finetune --task classify --base PATH_TO_BERT_DIR data.jsonl [--method lora]

The recipe (`recipe.py`) is the one decoder classifiers use: the same loop, sampler, schedules, metrics,
best-by-macro-F1 checkpoints and exact resume. What differs lives here:

* the base is `transformers.AutoModel.from_pretrained(dir)` (safetensors only, its pooler dropped: our
  head pools), with the directory's own tokenizer.json (its fixed padding and truncation switched off);
* a text is encoded with the tokenizer's special tokens ([CLS] text [SEP]), cut to `max_length` with the
  closing token kept;
* `EncoderClassifier` puts dropout and a Linear head over the pooled states: `mean` over real tokens (the
  default, as sentence-transformers models were trained), `cls` (the first token) or `last`;
* LoRA targets are name patterns of the encoder's own Linear layers: left at the decoder default
  (attn.qkv, attn.out), they become the family's attention projections (`query`, `key`, `value`,
  `attention.output.dense` for BERT).

A checkpoint holds the encoder's state dict under transformers' names (`model.safetensors`, or only the
LoRA adapter), `model_config.json` = {"architecture": "hf-encoder", "model_type", "hf_config": the base's
config.json}, the tokenizer and the classifier head; `lmforge.finetune.load_classifier` loads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lmforge.compress.quantize import quiet_torchao
from lmforge.errors import ConfigError, LmforgeError
from lmforge.finetune.classify import focal_loss, pad_right, pool_states

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lmforge.config import Config, FinetuneConfig
    from lmforge.model.lora import LoraSpec

log = logging.getLogger("lmforge")

ARCHITECTURE = "hf-encoder"  # model_config.json's "architecture" in an encoder classifier's checkpoint

# The encoder families we fine-tune, with the LoRA targets used when lora.targets is left at its default:
# each family's attention projections (q, k, v and the attention output).
ENCODER_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense"],
    "camembert": ["query", "key", "value", "attention.output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "albert": ["query", "key", "value", "attention.dense"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense"],
}
ENCODER_MODEL_TYPES = tuple(ENCODER_LORA_TARGETS)
DECODER_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")  # lmforge.model.hf_convert's
POOLINGS = ("mean", "cls", "last", "max")


# ---------------------------------------------------------------------------------------------------------
# Recognising an encoder directory
# ---------------------------------------------------------------------------------------------------------


def read_hf_config(path: str | Path) -> dict[str, Any] | None:
    """A Hugging Face directory's config.json (a dict), or None when `path` is not a Hugging Face directory
    (an lmforge checkpoint or run directory has model_config.json, or no config.json at all)."""
    path = Path(path)
    file = path / "config.json"
    if not path.is_dir() or not file.is_file() or (path / "model_config.json").is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LmforgeError(f"{file}: expected a JSON object")
    return config


def is_encoder_dir(path: str | Path | None) -> bool:
    """True for a Hugging Face directory of an encoder family we fine-tune (config.json's model_type)."""
    if not path:
        return False
    config = read_hf_config(path)
    return config is not None and config.get("model_type") in ENCODER_MODEL_TYPES


def check_hf_base(path: str | Path, task: str) -> None:
    """One line, before a run directory is made, for a Hugging Face base this task cannot train: an encoder
    for instruction tuning, or an architecture that is neither a supported encoder nor decoder."""
    config = read_hf_config(path)
    if config is None:
        return
    kind = config.get("model_type")
    where = Path(path) / "config.json"
    if kind in ENCODER_MODEL_TYPES and task != "classify":
        raise ConfigError(f"{path} is a {kind} encoder: it fine-tunes for --task classify only, not {task} "
                          "(instruction tuning needs a decoder)")  # fmt: skip
    if kind not in ENCODER_MODEL_TYPES and kind not in DECODER_MODEL_TYPES:
        shown = "no model_type" if kind is None else f"model_type {kind!r}"
        encoders = f"; encoders (classify): {', '.join(ENCODER_MODEL_TYPES)}" if task == "classify" else ""
        raise ConfigError(f"{where}: unsupported architecture ({shown}); supported are decoders: "
                          f"{', '.join(DECODER_MODEL_TYPES)}{encoders}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The base: model, tokenizer, shape
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EncoderBase:
    """What the fine-tuning recipe needs of an encoder base (the counterpart of infer.load.LoadedModel)."""

    model: nn.Module  # a transformers PreTrainedModel (BertModel, ...) without its pooler
    tokenizer: Tokenizer
    hf_config: dict[str, Any]  # the base's config.json as read
    source: Path
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    eos_id: int | None = None  # texts are closed by the tokenizer's own [SEP], never an EOS we append
    kind: str = ARCHITECTURE

    @property
    def model_type(self) -> str:
        return str(self.hf_config.get("model_type"))

    @property
    def block_size(self) -> int:
        return max_input_length(self.hf_config)

    @property
    def model_config(self) -> dict[str, Any]:
        """model_config.json of the checkpoints (and the base's identity for LoRA adapters)."""
        return {"architecture": ARCHITECTURE, "model_type": self.model_type, "hf_config": self.hf_config}


def max_input_length(hf_config: dict[str, Any]) -> int:
    """The longest input (special tokens included) the position embeddings cover; RoBERTa's positions
    start after its padding index."""
    positions = int(hf_config.get("max_position_embeddings") or 512)
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= int(hf_config.get("pad_token_id", 1)) + 1
    return positions


def load_encoder_base(path: str | Path) -> EncoderBase:
    """The encoder of a Hugging Face directory (safetensors weights only), in training mode."""
    from transformers import AutoModel

    path = Path(path)
    hf_config = read_hf_config(path)
    if hf_config is None or hf_config.get("model_type") not in ENCODER_MODEL_TYPES:
        raise LmforgeError(f"{path}: not a Hugging Face encoder directory ({', '.join(ENCODER_MODEL_TYPES)})")
    if not any(path.glob("*.safetensors")):
        raise LmforgeError(f"{path}: no *.safetensors weights (pickled .bin files are not loaded)")
    tokenizer, tokenizer_config = load_encoder_tokenizer(path)
    try:
        with quiet_torchao():  # transformers imports torchao (if installed) while loading
            model, info = AutoModel.from_pretrained(str(path), use_safetensors=True, dtype=torch.float32,
                                                    output_loading_info=True)  # fmt: skip
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LmforgeError(f"{path}: transformers cannot load the encoder ({reason})") from None
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise LmforgeError(f"{path}: the weights lack {len(missing)} of the encoder's tensors (e.g. {sorted(missing)[0]})")
    drop_pooler(model)
    model.train()
    return EncoderBase(model, tokenizer, hf_config, path, tokenizer_config)


def build_encoder(hf_config: dict[str, Any]) -> nn.Module:
    """An encoder of `hf_config`'s shape (weights to be loaded), without its pooler."""
    from transformers import CONFIG_MAPPING, AutoModel

    kind = hf_config.get("model_type")
    if kind not in ENCODER_MODEL_TYPES:
        raise LmforgeError(f"model_type {kind!r} is not an encoder family we fine-tune")
    config = CONFIG_MAPPING[kind].from_dict(hf_config)
    with quiet_torchao():
        model = AutoModel.from_config(config, dtype=torch.float32)
    drop_pooler(model)
    return model


def drop_pooler(model: nn.Module) -> None:
    """BERT-style models end in a pooler (a dense layer on [CLS]) that our head replaces: untrained and
    unused, it would only hold gradients that never come (DDP refuses those)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def load_encoder_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The directory's tokenizer.json (else transformers' conversion of its vocabulary files), with padding
    and truncation off: batches are padded here, texts cut by `text_encoder`."""
    from lmforge.tokenizer import TOKENIZER_FILE, load_tokenizer, read_tokenizer_config

    if (path / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(path)
        config = read_tokenizer_config(path)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True).backend_tokenizer
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise LmforgeError(f"{path}: no tokenizer.json and no vocabulary transformers can convert ({exc})") from None
        config = {}
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, config


def text_encoder(tokenizer: Tokenizer, max_length: int) -> Callable[[str], tuple[list[int], bool]]:
    """text -> (ids with the tokenizer's special tokens, whether the text was cut to fit max_length)."""
    keep = max_length - tokenizer.num_special_tokens_to_add(False)
    if keep < 1:
        raise ConfigError(f"finetune.max_length={max_length} leaves no room for text between the special tokens")

    def encode(text: str) -> tuple[list[int], bool]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        cut = len(encoding.ids) > keep
        if cut:
            encoding.truncate(keep)
        return tokenizer.post_process(encoding).ids, cut

    return encode


# ---------------------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------------------


class EncoderClassifier(nn.Module):
    """A transformers encoder (`backbone`) with dropout and a Linear `head` over its pooled final states.

    `forward(idx, targets, attention_mask)` returns `(logits (B, num_labels), loss)` like
    `classify.ClassifierModel`, so the loop, the evaluation and `predict` treat both alike."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean",
                 weight: Sequence[float] | None = None, focal_gamma: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"finetune.pooling must be one of {', '.join(POOLINGS)} for an encoder, got {pooling!r}")
        if num_labels < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {num_labels}")
        self.backbone = backbone
        self.pooling = pooling
        self.focal_gamma = focal_gamma
        hidden = int(backbone.config.hidden_size)
        dropout = getattr(backbone.config, "hidden_dropout_prob", None)
        if dropout is None:  # DistilBERT names it differently
            dropout = getattr(backbone.config, "seq_classif_dropout", getattr(backbone.config, "dropout", 0.1))
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        w = torch.tensor(weight, dtype=torch.float32) if weight is not None else None
        self.register_buffer("class_weight", w, persistent=False)
        self.eos_id: int | None = None  # for parity with ClassifierModel: encoders close texts with [SEP]
        self.max_length: int | None = None  # the training max_length (set by load_encoder_classifier)
        self.positions = max_input_length(backbone.config.to_dict())

    @property
    def config(self) -> SimpleNamespace:
        """What code written for ClassifierModel reads of `model.config`: the longest input, block_size."""
        return SimpleNamespace(block_size=self.max_length or self.positions)

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, T, C) -> (B, C): the first token's state ([CLS]), or the last / mean / max over real tokens."""
        return hidden[:, 0] if self.pooling == "cls" else pool_states(hidden, attention_mask, self.pooling)

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(logits, the (focal / weighted) cross-entropy over `targets` or None); rows right-padded."""
        hidden = self.backbone(input_ids=idx, attention_mask=attention_mask).last_hidden_state
        logits = self.head(self.dropout(self.pool(hidden, attention_mask))).float()
        loss = None
        if targets is not None:
            loss = focal_loss(logits, targets, self.focal_gamma, self.class_weight)
        return logits, loss

    def configure_optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on Linear weight matrices (the head's included); none on LayerNorms, biases,
        embeddings or LoRA factors. Trainable parameters only."""
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if id(p) in matrices else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @torch.no_grad()
    def predict(self, ids: Sequence[Sequence[int]], batch_size: int = 32) -> Tensor:
        """Class probabilities (N, num_labels) of token-id sequences (as `encode_texts` makes them)."""
        device = self.head.weight.device
        out = []
        for i in range(0, len(ids), batch_size):
            x, mask = pad_right(ids[i : i + batch_size], 0)
            logits, _ = self(x.to(device), attention_mask=mask.to(device))
            out.append(logits.softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)

    def encode_texts(self, tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
        """Texts as the classifier was trained on them: [CLS] text [SEP], cut to max_length."""
        encode = text_encoder(tokenizer, self.config.block_size)
        return [encode(text)[0] for text in texts]


def lora_targets(targets: Sequence[str], model_type: str) -> list[str]:
    """The configured LoRA targets, or the family's attention projections in place of the decoder default."""
    from lmforge.config import LoraConfig

    if list(targets) == LoraConfig().targets:
        chosen = ENCODER_LORA_TARGETS[model_type]
        log.info("lora.targets: %s encoder, adapting %s", model_type, ", ".join(chosen))
        return list(chosen)
    return list(targets)


def build_encoder_classifier(base: EncoderBase, cfg: Config, num_labels: int,
                             class_weights: Sequence[float] | None) -> tuple[EncoderClassifier, LoraSpec | None]:  # fmt: skip
    """The module to train: the encoder (LoRA adapters, or frozen layers) under a fresh head."""
    from lmforge.model.lora import LoraSpec, apply_lora, freeze, mark_only_lora_trainable

    fcfg = cfg.finetune
    spec = None
    if fcfg.method == "lora":
        spec = LoraSpec.from_config(cfg.lora)
        spec.targets = lora_targets(spec.targets, base.model_type)
        apply_lora(base.model, spec)
        mark_only_lora_trainable(base.model)
    elif fcfg.freeze:
        frozen = freeze(base.model, fcfg.freeze)
        log.info("froze %s parameters (finetune.freeze)", f"{frozen:,}")
    pooling = encoder_pooling(fcfg)
    return EncoderClassifier(base.model, num_labels, pooling, class_weights, fcfg.focal_gamma), spec


def encoder_pooling(fcfg: FinetuneConfig) -> str:
    """finetune.pooling for an encoder: `auto` is the mean over real tokens."""
    return "mean" if fcfg.pooling == "auto" else fcfg.pooling


# ---------------------------------------------------------------------------------------------------------
# Loading a trained encoder classifier
# ---------------------------------------------------------------------------------------------------------


def is_encoder_checkpoint(model_config: dict[str, Any]) -> bool:
    return model_config.get("architecture") == ARCHITECTURE


def load_encoder_classifier(ckpt: Path, head_config: dict[str, Any], head_state: dict[str, Tensor],
                            device: str | torch.device = "cpu") -> tuple[EncoderClassifier, Tokenizer, list[str]]:  # fmt: skip
    """(the classifier in eval mode, its tokenizer, its labels) from a verified encoder checkpoint: the full
    state dict, or a LoRA adapter over the base it records (refused, in one line, over any other)."""
    from lmforge.model.lora import attach_adapter, check_base, is_adapter_dir, read_adapter, weights_sha256
    from lmforge.train import checkpoint as ckpt_io

    labels = [str(label) for label in head_config["labels"]]
    if is_adapter_dir(ckpt):
        adapter, state = read_adapter(ckpt)
        base_path = Path(adapter.base.path)
        if not base_path.exists():
            raise LmforgeError(f"classifier {ckpt}: its base encoder {base_path} (adapter_config.json) is not found")
        base = load_encoder_base(base_path)
        check_base(adapter, weights_sha256(base_path), base.model_config, str(base_path), ckpt)
        attach_adapter(base.model, adapter, state)
        backbone = base.model
    else:
        model_config = ckpt_io.read_json(ckpt, "model_config.json")
        if not isinstance(model_config.get("hf_config"), dict):
            raise LmforgeError(f"{ckpt / 'model_config.json'}: no 'hf_config' for the encoder")
        backbone = build_encoder(model_config["hf_config"])
        weights = ckpt_io.load_model_state(ckpt)
        ckpt_io.check_shapes(ckpt, weights, backbone.state_dict())
        backbone.load_state_dict(weights)
    tokenizer, _ = load_encoder_tokenizer(ckpt)
    model = EncoderClassifier(backbone, len(labels), head_config.get("pooling", "mean"))
    try:
        model.head.load_state_dict(head_state)
    except RuntimeError as exc:
        raise LmforgeError(f"{ckpt}: the classifier head does not fit the encoder ({exc})") from None
    model.max_length = head_config.get("max_length")
    return model.to(device).eval(), tokenizer, labels

