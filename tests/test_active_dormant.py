"""Tests of the Bigram-Backcopy task, the pluggable attention normaliser and the extreme-token probes."""
import numpy as np
import pytest
import torch

from tokenbook.longctx import active_dormant as ad


@pytest.fixture(scope="module")
def task():
    return ad.make_task(V=16, n_triggers=3, alpha=0.5, seed=1)


def test_task_is_a_valid_chain(task):
    assert task.P.shape == (16, 16) and np.allclose(task.P.sum(1), 1.0)
    assert len(set(task.triggers)) == 3 and all(0 <= t < 16 for t in task.triggers)
    assert task.bos == 16
    with pytest.raises(ValueError):
        ad.make_task(V=16, n_triggers=0)


def test_sequences_obey_the_backcopy_rule(task):
    x = ad.sample(task, 200, 40, np.random.default_rng(0)).numpy()
    trig = set(task.triggers)
    assert (x[:, 0] == task.bos).all() and (x[:, 1:] < task.V).all()
    assert not any(v in trig for v in x[:, 1])                # the first token is never a trigger
    n_copies = 0
    for row in x:
        for t in range(2, len(row)):
            if row[t - 1] in trig:
                assert row[t] == row[t - 2]                   # back-copy after every trigger
                n_copies += 1
            assert not (row[t - 1] in trig and row[t] in trig)  # triggers are never adjacent
    assert n_copies > 100


def test_non_trigger_positions_follow_the_bigram(task):
    x = ad.sample(task, 4000, 30, np.random.default_rng(2)).numpy()
    trig = np.isin(x[:, :-1], task.triggers)
    prev, nxt = x[:, 1:-1][~trig[:, 1:]], x[:, 2:][~trig[:, 1:]]
    counts = np.zeros((task.V, task.V))
    np.add.at(counts, (prev, nxt), 1)
    rows = counts.sum(1) > 2000
    emp = counts[rows] / counts[rows].sum(1, keepdims=True)
    assert np.abs(emp - task.P[rows]).max() < 0.05


def test_position_kinds(task):
    t0 = task.triggers[0]
    other = next(v for v in range(task.V) if v not in task.triggers)
    x = torch.tensor([[task.bos, other, t0, other, other]])
    k = ad.position_kinds(task, x)
    assert k["trigger"].tolist() == [[False, False, True, False, False]]
    assert k["non_trigger"].tolist() == [[False, True, False, True, True]]


def test_softmax_and_relu_normalisers():
    s = torch.tensor([[1.0, 5.0, 5.0], [2.0, -1.0, 5.0], [-1.0, 3.0, -2.0]])
    soft = ad.normalise(s, "softmax")
    assert torch.allclose(soft.sum(-1), torch.ones(3)) and soft[0, 1:].abs().max() == 0
    relu = ad.normalise(s, "relu")
    want = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])   # ReLU(s_ij)/(i+1) below the diagonal
    assert torch.allclose(relu, want)
    with pytest.raises(ValueError):
        ad.normalise(s, "sigmoid")


def test_probes_on_a_hand_built_attention():
    T = 4
    a = torch.zeros(2, 1, T, T)
    a[0, 0, :, 0] = 1.0                                        # sequence 0: every query sinks on BOS
    a[1, 0] = torch.eye(T)                                     # sequence 1: every query attends to itself
    a[1, 0, 2] = torch.tensor([0.5, 0.0, 0.5, 0.0])
    q = torch.tensor([[False, True, True, True]] * 2)
    share = ad.bos_share(a, q)
    assert torch.allclose(share[:, 0], torch.tensor([1.0, 0.5 / 3]))
    a_relu = torch.zeros(1, 1, T, T)                           # all-zero ReLU rows: no weight on BOS
    assert ad.bos_share(a_relu, q[:1]).item() == 0.0
    v = torch.ones(1, 1, T, 2)
    v[0, 0, 0] = 0.1
    assert torch.allclose(ad.norm_ratio(v), torch.tensor([[0.1]]))
    h = torch.ones(3, T, 5)
    h[:, 0] *= 4
    assert torch.allclose(ad.norm_ratio(h), torch.full((3,), 4.0))


def test_select_head_picks_the_largest_gap():
    s = {"bos_non_trigger": np.zeros((2, 5, 3)), "bos_trigger": np.zeros((2, 5, 3))}
    s["bos_non_trigger"][1, :, 2] = 0.9
    s["bos_trigger"][1, :, 2] = 0.1
    s["bos_non_trigger"][0, :, 0] = 0.9                        # a sink on every query: no gap
    s["bos_trigger"][0, :, 0] = 0.9
    assert ad.select_head(s) == (1, 2)


@pytest.mark.parametrize("normaliser,optimiser,lr", [("softmax", "adam", 3e-3), ("relu", "adam", 3e-3),
                                                     ("softmax", "sgd", 0.3)])
def test_a_short_training_run_lowers_the_loss(task, normaliser, optimiser, lr):
    px = ad.sample(task, 16, 16, np.random.default_rng(5))
    r = ad.train_arm(task, normaliser=normaliser, optimiser=optimiser, lr=lr, steps=60, batch=32, T=16, d=32,
                     n_layers=1, n_heads=2, seed=0, probe_x=px, probe_every=30, progress=False)
    assert np.mean(r["losses"][-10:]) < np.mean(r["losses"][:5]) - 0.3
    assert [c["step"] for c in r["curve"]] == [0, 30, 60]
    s = ad.probe(r["model"], task, px)
    assert s["bos_non_trigger"].shape == (1, 16, 2) and s["residual_ratio"].shape == (1, 16)
    assert (s["bigram_loss"] > 0).all() and np.isfinite(s["bigram_floor"]).all()


def test_probe_of_the_model_matches_a_manual_forward(task):
    torch.manual_seed(0)
    m = ad.TinyLM(task.V, 9, d=16, n_layers=2, n_heads=2, normaliser="softmax").eval()
    x = ad.sample(task, 3, 8, np.random.default_rng(0))
    logits, rec = m(x, probes=True)
    assert torch.allclose(logits, m(x))
    a = rec["attn"][1]
    assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5)
    assert torch.all(a.triu(1) == 0)                             # causal


def test_probe_task_metrics_pool_over_trigger_positions(task):
    """Copy counts are per sequence (a sequence may hold no trigger) and the bigram floor is the
    true conditional entropy of the positions scored."""
    torch.manual_seed(0)
    m = ad.TinyLM(task.V, 13, d=16).eval()
    x = ad.sample(task, 50, 12, np.random.default_rng(3))
    s = ad.probe(m, task, x)
    trig = np.isin(x[:, :-1].numpy(), task.triggers)
    assert (s["copy_positions"] == trig.sum(1)).all()
    assert (s["copy_correct"] <= s["copy_positions"]).all()
    H = ad.bigram_entropy(task)
    row = 0
    ordinary = ~trig[row] & (x[row, :-1].numpy() != task.bos)
    assert np.isclose(s["bigram_floor"][row], H[x[row, :-1].numpy()[ordinary]].mean(), atol=1e-5)
