"""Claim verdicts computed from measurements, never typed in.

A claim compares an `Estimate` (value + confidence interval) with a criterion taken from the
paper. The verdict is decided by where the whole interval lies:

- reproduced:      the interval lies entirely on the paper's side of the threshold;
- not reproduced:  the interval lies entirely on the other side;
- inconclusive:    the interval straddles the threshold (more seeds or repeats would decide);
- not testable at this scale: the claim is recorded but judged only at the scales that can test it
  (e.g. latency claims measured on a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass

from .stats import Estimate

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)


@dataclass(frozen=True)
class Criterion:
    """Base class: subclasses say what the paper's claim requires of the measured value."""

    def judge(self, m: Estimate) -> tuple[str, str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AtLeast(Criterion):
    threshold: float

    def describe(self) -> str:
        return f"measured ≥ {self.threshold:g}"

    def judge(self, m: Estimate) -> tuple[str, str]:
        if m.lo >= self.threshold:
            return REPRODUCED, f"whole interval [{m.lo:.4g}, {m.hi:.4g}] ≥ {self.threshold:g}"
        if m.hi < self.threshold:
            return NOT_REPRODUCED, f"whole interval [{m.lo:.4g}, {m.hi:.4g}] < {self.threshold:g}"
        return INCONCLUSIVE, f"interval [{m.lo:.4g}, {m.hi:.4g}] contains {self.threshold:g}"


@dataclass(frozen=True)
class AtMost(Criterion):
    threshold: float

    def describe(self) -> str:
        return f"measured ≤ {self.threshold:g}"

    def judge(self, m: Estimate) -> tuple[str, str]:
        if m.hi <= self.threshold:
            return REPRODUCED, f"whole interval [{m.lo:.4g}, {m.hi:.4g}] ≤ {self.threshold:g}"
        if m.lo > self.threshold:
            return NOT_REPRODUCED, f"whole interval [{m.lo:.4g}, {m.hi:.4g}] > {self.threshold:g}"
        return INCONCLUSIVE, f"interval [{m.lo:.4g}, {m.hi:.4g}] contains {self.threshold:g}"


@dataclass(frozen=True)
class Between(Criterion):
    lo: float
    hi: float

    def describe(self) -> str:
        return f"{self.lo:g} ≤ measured ≤ {self.hi:g}"

    def judge(self, m: Estimate) -> tuple[str, str]:
        if self.lo <= m.lo and m.hi <= self.hi:
            return REPRODUCED, f"interval [{m.lo:.4g}, {m.hi:.4g}] inside [{self.lo:g}, {self.hi:g}]"
        if m.hi < self.lo or m.lo > self.hi:
            return NOT_REPRODUCED, f"interval [{m.lo:.4g}, {m.hi:.4g}] outside [{self.lo:g}, {self.hi:g}]"
        return INCONCLUSIVE, f"interval [{m.lo:.4g}, {m.hi:.4g}] overlaps a bound of [{self.lo:g}, {self.hi:g}]"


def judge(measured: Estimate | None, criterion: Criterion, *, testable: bool = True,
          why_not: str = "") -> tuple[str, str]:
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion must be AtLeast/AtMost/Between, got {type(criterion).__name__}")
    if not testable:
        return NOT_TESTABLE, why_not or "this claim is judged at another scale"
    if not isinstance(measured, Estimate):
        raise TypeError(f"measured must be a tokenbook.stats.Estimate (with its uncertainty), "
                        f"got {type(measured).__name__}; build one with stats.bootstrap/from_seeds/exact")
    return criterion.judge(measured)
