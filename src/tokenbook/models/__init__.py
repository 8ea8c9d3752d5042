"""Models by name: the real SmolLM2-135M-Instruct, random-init Llamas, any local HF checkpoint.

`load(cfg.model, device, dtype)` returns `(model, tokenizer)`; the Hydra group `model` chooses.
"""
from .loading import load, load_tokenizer  # noqa: F401
