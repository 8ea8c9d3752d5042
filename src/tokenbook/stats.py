"""Estimates with uncertainty: every measured value a claim is judged on carries an interval.

An `Estimate` is a point value with a confidence interval and the method that produced it
(bootstrap over samples, spread over seeds, or exact for deterministic quantities).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int
    method: str          # "bootstrap" | "seeds" | "exact"
    level: float = 0.95
    unit: str = ""

    def __post_init__(self):
        if not all(np.isfinite([self.value, self.lo, self.hi])):
            raise ValueError(f"estimate is not finite: {self.value} [{self.lo}, {self.hi}]")
        if self.lo > self.value + 1e-12 * abs(self.value) or self.hi < self.value - 1e-12 * abs(self.value):
            raise ValueError(f"interval [{self.lo}, {self.hi}] does not contain the value {self.value}")

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        if self.method == "exact":
            return f"{self.value:.4g}{u} (exact)"
        return f"{self.value:.4g}{u} [{self.lo:.4g}, {self.hi:.4g}] ({self.level:.0%} {self.method}, n={self.n})"


def exact(value: float, unit: str = "") -> Estimate:
    """A deterministic quantity (a count, a max error over all cases): its interval is the point."""
    v = float(value)
    return Estimate(v, v, v, 1, "exact", 1.0, unit)


def bootstrap(samples: Sequence[float], stat: Callable = np.mean, *, level: float = 0.95,
              n_boot: int = 2000, seed: int = 0, unit: str = "") -> Estimate:
    """Percentile bootstrap of `stat` over i.i.d. samples."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"bootstrap needs at least 2 samples, got {len(x)}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.apply_along_axis(stat, 1, x[idx])
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    v = float(stat(x))
    return Estimate(v, float(min(lo, v)), float(max(hi, v)), len(x), "bootstrap", level, unit)


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], stat: Callable = np.median, *,
                    paired: bool = True, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                    unit: str = "×") -> Estimate:
    """stat(num) / stat(den) with a bootstrap interval; `paired` resamples (num_i, den_i) together.

    Typical use: a speedup = baseline times / method times measured in interleaved repeats.
    """
    a, b = np.asarray(num, float), np.asarray(den, float)
    if min(len(a), len(b)) < 2:
        raise ValueError("bootstrap_ratio needs at least 2 samples on each side")
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(n_boot, len(a)))
    ib = ia if paired else rng.integers(0, len(b), size=(n_boot, len(b)))
    boots = np.apply_along_axis(stat, 1, a[ia]) / np.apply_along_axis(stat, 1, b[ib])
    q = (1 - level) / 2
    lo, hi = np.quantile(boots, [q, 1 - q])
    v = float(stat(a) / stat(b))
    return Estimate(v, float(min(lo, v)), float(max(hi, v)), len(a), "bootstrap", level, unit)


def from_seeds(values: Sequence[float], *, level: float = 0.95, unit: str = "") -> Estimate:
    """Mean over independent seeds with a Student-t interval."""
    x = np.asarray(values, float)
    if len(x) < 2:
        raise ValueError("from_seeds needs at least 2 seeds")
    m, s = float(x.mean()), float(x.std(ddof=1))
    half = _t_quantile(1 - (1 - level) / 2, len(x) - 1) * s / np.sqrt(len(x))
    return Estimate(m, m - half, m + half, len(x), "seeds", level, unit)


def _t_quantile(p: float, df: int) -> float:
    try:
        from scipy.stats import t
        return float(t.ppf(p, df))
    except ImportError:  # a Cornish-Fisher style approximation, accurate to ~1e-3 for df >= 2
        from statistics import NormalDist
        z = NormalDist().inv_cdf(p)
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        return z + g1 / df + g2 / df**2 + g3 / df**3


def bootstrap_fn(samples: dict[str, Sequence[float]], fn: Callable[[dict[str, np.ndarray]], float], *,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0, unit: str = "") -> Estimate:
    """Bootstrap any statistic of several sample arrays measured in paired rounds.

    All arrays must have the same length (round i of every arm is resampled together), e.g.
    timings of three arms from `timing.interleaved`, and fn maps {name: array} → a number.
    """
    arrays = {k: np.asarray(v, float) for k, v in samples.items()}
    lens = {len(v) for v in arrays.values()}
    if len(lens) != 1 or lens.pop() < 2:
        raise ValueError(f"bootstrap_fn needs equal-length arrays of >= 2 samples, got "
                         f"{ {k: len(v) for k, v in arrays.items()} }")
    n = len(next(iter(arrays.values())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([fn({k: v[i] for k, v in arrays.items()}) for i in idx])
    q = (1 - level) / 2
    lo, hi = np.quantile(boots, [q, 1 - q])
    v = float(fn(arrays))
    return Estimate(v, float(min(lo, v)), float(max(hi, v)), n, "bootstrap", level, unit)
