"""Fine-tuning: instruction tuning (`sft.py`) and classification (`classify.py`) over a base model, full or
LoRA, run by `recipe.py` through the training loop of `lmforge.train`.

`load_classifier(path)` gives a trained classifier back for inference (a decoder's `ClassifierModel`, or an
`EncoderClassifier` over a BERT-family encoder, `encoder.py`); `classifier_predictor(path)` is it as the
evaluation stage's texts -> labels function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.finetune.classify import ClassifierModel, classifier_predictor, load_classifier
from lmforge.finetune.encoder import EncoderClassifier

if TYPE_CHECKING:
    from lmforge.config import Config

__all__ = ["ClassifierModel", "EncoderClassifier", "classifier_predictor", "load_classifier", "run_finetune"]


def run_finetune(cfg: Config) -> dict[str, Any]:
    """See `lmforge.finetune.recipe.run_finetune` (imported on use: it pulls in the whole training stack)."""
    from lmforge.finetune.recipe import run_finetune as run

    return run(cfg)
