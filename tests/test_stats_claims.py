import numpy as np
import pytest

from tokenbook import stats
from tokenbook.claims import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, AtLeast, AtMost,
                              Between, judge)


def est(lo, v, hi):
    return stats.Estimate(v, lo, hi, 10, "bootstrap")


@pytest.mark.parametrize("crit, e, verdict", [
    (AtLeast(1.5), est(1.6, 2.0, 2.4), REPRODUCED),
    (AtLeast(1.5), est(1.5, 2.0, 2.4), REPRODUCED),       # bound touches the threshold
    (AtLeast(1.5), est(1.2, 1.6, 2.0), INCONCLUSIVE),     # point above, interval straddles
    (AtLeast(1.5), est(0.9, 1.1, 1.4), NOT_REPRODUCED),
    (AtMost(1e-3), est(1e-5, 2e-5, 5e-5), REPRODUCED),
    (AtMost(1e-3), est(5e-4, 2e-3, 3e-3), INCONCLUSIVE),
    (AtMost(1e-3), est(2e-3, 3e-3, 4e-3), NOT_REPRODUCED),
    (Between(0.9, 1.1), est(0.95, 1.0, 1.05), REPRODUCED),
    (Between(0.9, 1.1), est(1.05, 1.1, 1.2), INCONCLUSIVE),
    (Between(0.9, 1.1), est(1.2, 1.3, 1.4), NOT_REPRODUCED),
])
def test_verdict_follows_the_whole_interval(crit, e, verdict):
    assert judge(e, crit)[0] == verdict


def test_not_testable_and_type_errors():
    assert judge(est(2, 3, 4), AtLeast(1), testable=False, why_not="gpu only") == (NOT_TESTABLE, "gpu only")
    assert judge(None, AtLeast(1), testable=False)[0] == NOT_TESTABLE
    with pytest.raises(TypeError, match="Estimate"):
        judge(2.0, AtLeast(1))          # a bare number has no uncertainty: refused
    with pytest.raises(TypeError, match="criterion"):
        judge(est(1, 2, 3), 1.5)


def test_estimate_rejects_nonsense():
    with pytest.raises(ValueError):
        stats.Estimate(1.0, 2.0, 3.0, 5, "bootstrap")     # interval must contain the value
    with pytest.raises(ValueError):
        stats.exact(float("nan"))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(200):
        e = stats.bootstrap(rng.normal(3.0, 1.0, 40), n_boot=400, seed=i)
        covered += e.lo <= 3.0 <= e.hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ratio_recovers_a_known_speedup():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.02, 20)
    fast = base / 4 * rng.normal(1, 0.01, 20)
    e = stats.bootstrap_ratio(base, fast)
    assert e.lo <= 4.0 <= e.hi and e.hi - e.lo < 0.2


def test_from_seeds_uses_student_t():
    e = stats.from_seeds([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd 1.5811, t(0.975, 4) = 2.7764 → half-width 1.9632
    assert e.value == pytest.approx(3.0)
    assert e.hi - e.value == pytest.approx(1.9632, abs=2e-3)


def test_bootstrap_fn_pairs_rounds_across_arms():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    e = stats.bootstrap_fn({"a": a, "b": 2 * a}, lambda t: float(np.mean(t["b"] / t["a"])))
    assert e.lo == e.hi == 2.0            # paired resampling keeps the exact ratio
    with pytest.raises(ValueError):
        stats.bootstrap_fn({"a": a, "b": a[:3]}, lambda t: 0.0)
