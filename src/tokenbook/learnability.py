"""Learnability floors: when tiny models have not learned a task, comparisons between them are not judged.

Chapters that train small models from scratch (arithmetic, next-word prediction, ...) compare arms
that may all sit near zero at a small scale. Such a gap says nothing about the paper's claim. A
`FloorCheck` measures the baseline on items it should get right, and turns a missed floor into the
claim verdict "not testable at this scale" (see `tokenbook.claims`), with the numbers as the reason:

    f = FloorCheck.of(correct_flags, floor=0.5, what="plain format on 2×2-digit problems")
    run.claim(..., testable_at=f.testable_at(("cpu", "gpu")), why_not=f.why_not(), note=f.describe())
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloorCheck:
    """Did the baseline learn the in-distribution task well enough for a comparison to mean anything?

    A gap (or a ratio) between two arms that are both near zero measures under-training, not the
    paper's claim: a floor effect. So a comparative claim is judged only when the baseline's accuracy
    on the items where the paper's baseline succeeds reaches `floor`; otherwise it is reported as
    not testable at that scale, with the measured accuracy as the reason.
    """
    what: str                    # which baseline items, e.g. "plain format on 2×2-digit products"
    accuracy: float
    n: int                       # items behind `accuracy`
    floor: float
    metric: str = "exact match"  # what `accuracy` counts, for the messages

    def __post_init__(self):
        if not 0.0 <= float(self.floor) <= 1.0:
            raise ValueError(f"floor must be an accuracy in [0, 1], got {self.floor}")
        if not 0.0 <= float(self.accuracy) <= 1.0:
            raise ValueError(f"accuracy must lie in [0, 1], got {self.accuracy}")

    @classmethod
    def of(cls, correct, floor: float, what: str, metric: str = "exact match") -> "FloorCheck":
        """From one right/wrong flag per baseline item."""
        c = np.asarray(list(correct), dtype=float)
        return cls(what, float(c.mean()) if len(c) else 0.0, int(len(c)), float(floor), metric)

    @property
    def passed(self) -> bool:
        return self.n > 0 and self.accuracy >= self.floor

    def testable_at(self, scales=("cpu", "gpu")) -> tuple[str, ...]:
        """The scales at which the comparative claim may be judged: none when the floor is missed."""
        return tuple(scales) if self.passed else ()

    def describe(self) -> str:
        return (f"baseline floor check: {self.what}: {self.accuracy:.1%} {self.metric} on {self.n} items "
                f"{'≥' if self.passed else '<'} floor {self.floor:.0%} ({'passed' if self.passed else 'failed'})")

    def why_not(self, also: str = "") -> str:
        """Why the claim is not judged: `also` (e.g. the smoke-scale reason) and, if missed, the floor."""
        parts = [also] if also else []
        if not self.passed:
            parts.append(f"floor effect: {self.what} reached only {self.accuracy:.1%} {self.metric} on {self.n} "
                         f"items (< floor {self.floor:.0%}): the task was not learned at this scale, so a "
                         f"comparison between arms would measure under-training, not the paper's claim")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"what": self.what, "metric": self.metric, "accuracy": self.accuracy, "n": self.n,
                "floor": self.floor, "passed": self.passed}
