"""Answer scoring (exact match, token F1, containment) and paired comparisons of per-example scores.

Normalization follows the SQuAD convention: lower case, punctuation and the articles a/an/the
removed, whitespace collapsed. Scores against several gold answers take the best one.

`tokenbook.stats` already has bootstrap intervals; what is added here is specific to comparing
two systems on the same examples: the mean paired difference with a bootstrap interval, and a
sign-flip permutation p-value for it.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

from .. import stats

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(gold) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in _golds(gold)))


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    def f1(p: str, g: str) -> float:
        pt, gt = normalize_answer(p).split(), normalize_answer(g).split()
        if not pt or not gt:
            return float(pt == gt)
        common = sum((Counter(pt) & Counter(gt)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(pt), common / len(gt)
        return 2 * precision * recall / (precision + recall)
    return max(f1(prediction, g) for g in _golds(gold))


def contains_answer(prediction: str, gold: str | Sequence[str]) -> float:
    """1 when a normalized gold answer occurs in the normalized prediction (passkey-style scoring)."""
    p = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in p for g in _golds(gold)))


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95, n_boot: int = 2000,
                      seed: int = 0, unit: str = "") -> stats.Estimate:
    """mean(a - b) over paired examples with a bootstrap interval (examples resampled as pairs)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in shape: {a.shape} vs {b.shape}")
    return stats.bootstrap(a - b, level=level, n_boot=n_boot, seed=seed, unit=unit)


def paired_permutation_p(a: Sequence[float], b: Sequence[float], *, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value for mean(a - b) = 0 (exact enumeration for n <= 16)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) == 0:
        raise ValueError("no paired examples")
    observed = abs(d.mean())
    if len(d) <= 16:
        signs = ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1) * 2 - 1
        return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    hits = np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12)
    return float((hits + 1) / (n_perm + 1))
