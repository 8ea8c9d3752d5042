"""MInference's offline search and online sparse prefill: pattern choice on synthetic attention maps,
exactness with full layouts, and density / recall accounting."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenbook.kernels import sparse_layouts as sl
from tokenbook.longctx import minference as mi
from tokenbook.longctx import patterns as pt

T, BS = 512, 64


def _synthetic_probs() -> torch.Tensor:
    """``[1, 3, T, T]`` attention maps with a known best pattern per head:
    head 0 — half on the first token, half on the diagonal (A-shape);
    head 1 — half on key columns 200 and 330, half on the diagonal (vertical-slash);
    head 2 — spread uniformly over the key block three blocks back (block-sparse)."""
    p = torch.zeros(1, 3, T, T)
    i = torch.arange(T)
    p[0, 0, i, 0] += 0.5
    p[0, 0, i, i] += 0.5
    p[0, 1, i, i] += 0.5
    for r in range(T):
        cols = [c for c in (200, 330) if c <= r]
        for c in cols:
            p[0, 1, r, c] += 0.5 / len(cols)
        if not cols:
            p[0, 1, r, r] += 0.5
        blk = r // BS - 3
        if blk >= 0:
            p[0, 2, r, blk * BS:(blk + 1) * BS] = 1.0 / BS
        else:
            p[0, 2, r, r] = 1.0
    return p


def _candidates() -> dict[str, torch.Tensor]:
    nb = T // BS
    a = sl.lambda_layout(nb, nb, 1, 2).expand(1, 3, nb, nb)
    vs = sl.vertical_slash_layout(torch.tensor([[200, 330]] * 3), torch.arange(64).repeat(3, 1), T, T, BS)
    r = torch.arange(nb)
    blk = (r[:, None] == r[None, :]) | (r[:, None] - 3 == r[None, :])
    return {"a_shape": a, "vertical_slash": vs, "block_sparse": blk[None, None].expand(1, 3, nb, nb)}


def test_search_picks_the_pattern_that_fits_each_synthetic_head():
    probs, lays = _synthetic_probs(), _candidates()
    rows = torch.arange(T)
    rec = torch.stack([mi.recall(probs, rows, lays[n], BS)[0] for n in mi.PATTERNS])      # [P, H]
    den = torch.stack([mi.head_density(lays[n])[0] for n in mi.PATTERNS])
    assert torch.allclose(rec.diagonal(), torch.ones(3), atol=1e-5)     # each head's own pattern keeps it all
    assert (rec - torch.eye(3)).max() < 0.9                             # the others lose a good share
    assert mi.choose(rec, den, max_density=1.0).tolist() == [0, 1, 2]
    # a budget nobody meets: every head falls back to the sparsest pattern
    sparsest = den.argmin(0)
    assert mi.choose(rec, den, max_density=0.0).tolist() == sparsest.tolist()


def test_choose_breaks_recall_ties_towards_the_sparser_pattern():
    rec = torch.tensor([[1.0], [1.0], [0.5]])
    den = torch.tensor([[0.4], [0.2], [0.1]])
    assert mi.choose(rec, den, 1.0).tolist() == [1]
    assert mi.choose(rec, den, 0.3).tolist() == [1]
    assert mi.choose(rec, den, 0.15).tolist() == [2]


def test_row_probs_and_recall_accounting():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 200, 16), torch.randn(1, 2, 200, 16)
    rows = mi.sample_rows(200, 25, seed=3)
    assert rows.min() >= 0 and rows.max() < 200 and (rows.diff() >= 0).all() and len(rows) == 25
    p = mi.row_probs(q, k, rows)
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 4, 25))
    full = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 4).masked_fill(
        torch.ones(200, 200).triu(1).bool(), -math.inf), -1)
    torch.testing.assert_close(p, full[:, :, rows])
    everything = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(mi.recall(p, rows, everything, 64), torch.ones(1, 4))
    torch.testing.assert_close(mi.head_density(everything), torch.ones(1, 4))


def test_density_accounting_matches_the_shared_helper():
    lay = sl.lambda_layout(8, 8, 1, 2)
    assert mi.head_density(lay).item() == pytest.approx(sl.density(lay))
    mixed = torch.cat([lay, sl.causal_block_mask(8, 8)[None, None]], 1)
    d = mi.head_density(mixed)[0]
    assert d[1].item() == 1.0 and d[0].item() == pytest.approx(sl.density(lay))
    assert sl.density(mixed) == pytest.approx(d.mean().item())


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    conf = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=97, max_position_embeddings=512,
                       attn_implementation="sdpa")
    return LlamaForCausalLM(conf).eval()


def _logits(model, ids, pattern):
    with torch.inference_mode(), pt.apply(model, pattern):
        return model(input_ids=ids[None]).logits[0].float()


def test_sparse_prefill_with_full_layouts_equals_dense(tiny_llama):
    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(1))
    dense = _logits(tiny_llama, ids, pt.Dense())
    # budgets big enough that every pattern keeps every causal block
    big = mi.Budget(block_size=16, sinks=16, window=1024, n_last=16, n_vertical=150, n_slash=150, topk=100)
    for name in mi.PATTERNS:
        pat = mi.sparse_pattern(mi.uniform_plan(name, 2, 4), big, backend="reference")
        torch.testing.assert_close(_logits(tiny_llama, ids, pat), dense, atol=2e-4, rtol=2e-4)
        assert pat.stats and all(d == pytest.approx(1.0) for _, d in pat.stats), name


def test_small_budget_is_sparse_and_changes_the_output(tiny_llama):
    ids = torch.randint(0, 97, (160,), generator=torch.Generator().manual_seed(2))
    small = mi.Budget(block_size=16, sinks=16, window=16, n_last=16, n_vertical=4, n_slash=20, topk=1)
    plan = mi.Plan(torch.tensor([[0, 1, 2, 0], [2, 1, 0, 1]]), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    pat = mi.sparse_pattern(plan, small, backend="reference")
    out = _logits(tiny_llama, ids, pat)
    assert [layer for layer, _ in pat.stats] == [0, 1]
    assert all(d < 0.6 for _, d in pat.stats)
    assert (out - _logits(tiny_llama, ids, pt.Dense())).abs().max() > 1e-3


def test_plan_layouts_give_each_head_its_own_pattern():
    torch.manual_seed(0)
    q, k = torch.randn(1, 3, 256, 16), torch.randn(1, 1, 256, 16)
    b = mi.Budget(block_size=32, sinks=32, window=64, n_last=32, n_vertical=8, n_slash=40, topk=2)
    plan = mi.Plan(torch.tensor([[2, 0, 1]]), torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))
    got = mi.plan_layouts(plan, b)(q, k, 0)
    each = mi.candidate_layouts(q, k, b)
    for h, p in enumerate(["block_sparse", "a_shape", "vertical_slash"]):
        assert torch.equal(got[0, h], each[p][0, h])


def test_search_on_a_real_forward_returns_a_plan(tiny_llama):
    ids = torch.randint(0, 97, (128,), generator=torch.Generator().manual_seed(5))
    b = mi.Budget(block_size=16, sinks=16, window=32, n_last=16, n_vertical=8, n_slash=24, topk=2)
    plan = mi.search(tiny_llama, [ids], b, n_rows=32, max_density=0.6)
    assert plan.choice.shape == (2, 4) and plan.recall.shape == (2, 3, 4)
    assert ((plan.recall > 0) & (plan.recall <= 1 + 1e-5)).all()
    assert sum(plan.counts().values()) == 8
    ch = mi.chosen(plan.density, plan)
    assert ch.shape == (2, 4)
