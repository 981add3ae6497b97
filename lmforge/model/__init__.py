"""The model (`gpt.py`), its named shapes (`presets.py`) and Hugging Face weight mapping (`hf_convert.py`)."""

from lmforge.model.gpt import GPT, GPTConfig, KVCache
from lmforge.model.presets import PRESETS, get_preset

__all__ = ["GPT", "PRESETS", "GPTConfig", "KVCache", "get_preset"]
