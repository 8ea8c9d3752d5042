"""The learnability floor: a comparison of arms that never learned the task is not judged."""
import pytest

from tokenbook import setup
from tokenbook.learnability import FloorCheck


def test_floor_check_turns_a_floor_effect_into_not_testable():
    low = FloorCheck.of([True] * 3 + [False] * 97, 0.5, "plain format on 2×2-digit problems")
    assert not low.passed and low.accuracy == pytest.approx(0.03) and low.n == 100
    assert low.testable_at(("cpu", "gpu")) == ()
    why = low.why_not()
    assert "floor effect" in why and "3.0%" in why and "100 items" in why and "50%" in why
    assert low.why_not("smoke-scale models").startswith("smoke-scale models; floor effect")
    ok = FloorCheck.of([True] * 50 + [False] * 50, 0.5, "x")        # exactly at the floor passes
    assert ok.passed and ok.testable_at(("cpu", "gpu")) == ("cpu", "gpu") and ok.why_not("s") == "s"
    assert ok.to_dict()["passed"] is True and "passed" in ok.describe()
    assert not FloorCheck.of([], 0.5, "nothing").passed              # no items: never testable
    with pytest.raises(ValueError, match="floor"):
        FloorCheck.of([True], 50, "percent by mistake")


def test_floor_check_validates_its_numbers():
    with pytest.raises(ValueError, match="accuracy"):
        FloorCheck("x", 1.5, 10, 0.5)
    f = FloorCheck("better baseline", 0.051, 300, 0.15, metric="next-word accuracy")
    assert "5.1% next-word accuracy on 300 items" in f.why_not() and f.to_dict()["metric"] == "next-word accuracy"


def test_a_missed_floor_makes_the_claim_not_testable_with_the_numbers_as_reason():
    from tokenbook.claims import AtLeast
    from tokenbook.stats import Estimate
    run = setup("learn-your-tokens", "cpu")
    f = FloorCheck("better baseline", 0.05, 300, 0.15)
    run.claim("x", paper="p", measured=Estimate(0.0, -1.0, 1.0, 300, "bootstrap"), criterion=AtLeast(4.0),
              testable_at=f.testable_at(("cpu", "gpu")), why_not=f.why_not())
    c = run._claims[-1]
    assert c["verdict"] == "not testable at this scale" and "5.0%" in c["reason"] and "15%" in c["reason"]


def _lyt_results(acc: dict, n_pieces=20, per_piece=20, seed=0):
    """Synthetic learn-your-tokens results: each arm right on a fraction acc[arm] of the items."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = n_pieces * per_piece
    items = [{"piece": i // per_piece, "bucket": int(rng.integers(0, 5))} for i in range(n)]
    arms = {a: {"correct": list(rng.random(n) < p), "train_flops_per_byte": 1e6} for a, p in acc.items()}
    return {"items": items, "n_pieces": n_pieces, "arms": arms}


def test_learn_your_tokens_ratio_claims_wait_for_a_learned_baseline():
    from tokenbook.chapters import learn_your_tokens as ch
    run = setup("learn-your-tokens", "cpu")
    ch.check_claims(run, _lyt_results({"byte": 0.05, "bpe": 0.04, "etok": 0.30}))
    v = {c["id"]: c for c in run._claims}
    assert v["over_300pct"]["verdict"] == "not testable at this scale"
    assert "floor effect" in v["over_300pct"]["reason"] and "15%" in v["over_300pct"]["reason"]
    assert v["beats_byte"]["verdict"] == "reproduced"            # a gain is still judged below the floor
    assert run.metrics["floor_check"]["passed"] is False
    run = setup("learn-your-tokens", "cpu")                      # a learned baseline: the ratio is judged
    ch.check_claims(run, _lyt_results({"byte": 0.30, "bpe": 0.25, "etok": 0.35}))
    v = {c["id"]: c for c in run._claims}
    assert v["over_300pct"]["verdict"] == "not reproduced" and run.metrics["floor_check"]["passed"] is True
