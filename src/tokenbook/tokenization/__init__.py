"""Tokenization as a method: how numbers are cut into tokens and written out (arithmetic chapters).

- `arithmetic`: L2R / R2L chunked number tokenizers, digit-level, positional-description formats,
  problem generators with exact answers, an evaluator with an error taxonomy, and the glue that
  trains small models on them with `tokenbook.train`.
"""
from . import arithmetic  # noqa: F401
