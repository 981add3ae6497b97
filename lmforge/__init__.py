"""lmforge: a language model's whole life in one readable toolkit."""

__version__ = "0.1.0"
