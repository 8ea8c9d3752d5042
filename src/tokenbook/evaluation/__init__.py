"""Evaluating language models: likelihood, retrieval probes, answer metrics, generation speed.

- `perplexity.score_texts(model, tok, texts, max_length=, stride=)` → `LMScores` (perplexity,
  bits per byte, by context-length bucket, per-text values to bootstrap).
- `retrieval.passkey / needle / kv_retrieval` → `Probe` (prompt, answer, item char/token span).
- `metrics.exact_match / token_f1 / contains_answer`, `paired_difference`, `paired_permutation_p`.
- `speed.generation_speed(model, ids, new_tokens=)` → time to first token and decode tokens/s.
"""
from .metrics import (contains_answer, exact_match, normalize_answer, paired_difference,  # noqa: F401
                      paired_permutation_p, token_f1)
from .perplexity import LMScores, bits_per_byte, score_texts  # noqa: F401
from .retrieval import Probe, kv_retrieval, needle, passkey  # noqa: F401
from .speed import generation_speed  # noqa: F401
