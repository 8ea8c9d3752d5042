"""HiP's hierarchical top-k block selection: the vectorised search against its loop specification,
exact recovery where attention is local, equal budgets across arms, the brute-force scores, and the
patterns on a tiny Llama (a full budget is exactly dense attention)."""
import math

import numpy as np
import pytest
import torch

from tokenbook.chapters import hip_attention as chapter
from tokenbook.kernels import sparse_layouts as sl
from tokenbook.longctx import hip
from tokenbook.longctx import patterns as pt


def _qk(T, Hq=4, Hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, Hq, T, D, generator=g), torch.randn(1, Hkv, T, D, generator=g)


@pytest.mark.parametrize("T,Hq,Hkv,bs,K,rep,stride,chunk", [
    (300, 4, 2, 16, 3, "first", 1, 1 << 25),      # ragged last block, GQA
    (300, 4, 2, 16, 3, "center", 1, 3000),        # tiny chunks: many row chunks
    (512, 2, 1, 16, 4, "first", 2, 1 << 25),      # query stride (the paper's b_sq)
    (256, 3, 3, 32, 2, "center", 1, 1 << 25),     # MHA
    (100, 2, 1, 16, 8, "first", 1, 1 << 25),      # k larger than every row: all taken
], ids=["ragged-gqa", "chunked-center", "qstride", "mha", "k-covers-all"])
def test_vectorised_search_equals_the_loop_specification(T, Hq, Hkv, bs, K, rep, stride, chunk):
    q, k = _qk(T, Hq, Hkv, seed=T + K)
    b = hip.Budget(block_size=bs, k=K, representative=rep, q_stride=stride, chunk_elems=chunk)
    got = hip.hip_select(q, k, b)
    assert torch.equal(got, hip.hip_select_reference(q, k, b))
    nq = -(-T // bs)
    for r in range(nq):                                  # r visible past blocks (prefill: diagonal = r)
        row = got[0, :, r]
        if r <= K:
            assert (row[:, :r] == torch.arange(r)).all() and (row[:, r:] == -1).all()
        else:                                            # K distinct past blocks, ascending
            assert (row >= 0).all() and (row < r).all() and (row.diff(dim=-1) > 0).all()


def _local_keys(T, D, direction):
    """Queries all equal u; key j = a(j)·u with a monotone in j: the block score is monotone, so the
    exact top-k of a row is its K most recent (increasing) or K first (decreasing) past blocks."""
    u = torch.zeros(D)
    u[0] = 1.0
    a = torch.linspace(0.1, 3.0, T)
    a = a if direction == "increasing" else a.flip(0)
    q = u.expand(1, 2, T, D).clone()
    k = (a[:, None] * u)[None, None].expand(1, 1, T, D).clone()
    return q, k


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
@pytest.mark.parametrize("rep", ["first", "center"])
def test_search_finds_the_exact_top_k_when_scores_are_local(direction, rep):
    q, k = _local_keys(640, 8, direction)
    b = hip.Budget(block_size=16, k=3, representative=rep)
    hip_lay = hip.hip_layout(q, k, b)
    exact = hip.exact_topk_layout(q, k, b)
    assert torch.equal(hip_lay, exact)
    nq = 640 // 16
    r = nq - 1
    want = list(range(r - 3, r + 1)) if direction == "increasing" else [0, 1, 2, r]
    assert hip_lay[0, 0, r].nonzero().flatten().tolist() == want


def test_search_is_not_brute_force_when_scores_are_not_local():
    """A lone spike in one key block that is never a representative is missed by the tree search but
    not by the exact top-k: HiP relies on attention locality (and this test fails for a brute force)."""
    T, D, bs = 1024, 8, 16
    q = torch.zeros(1, 1, T, D)
    q[..., 0] = 1.0
    k = torch.randn(1, 1, T, D, generator=torch.Generator().manual_seed(0)) * 0.01
    spike = 37                                           # not the first block of any branch
    k[0, 0, spike * bs + 5, 0] = 50.0
    b = hip.Budget(block_size=bs, k=2, representative="first")
    last = T // bs - 1
    assert hip.exact_topk_layout(q, k, b)[0, 0, last, spike]
    assert not hip.hip_layout(q, k, b)[0, 0, last, spike]


@pytest.mark.parametrize("arm", ["hip", "hip_center", "exact_topk", "streaming", "random"])
def test_every_arm_keeps_the_same_budget(arm):
    T, bs, K = 400, 16, 4
    q, k = _qk(T, seed=3)
    b = hip.Budget(block_size=bs, k=K, sink_blocks=1)
    lay = hip.arm_layout(arm, q, k, b, layer=2, seed=1).expand(1, 4, -1, -1)
    nb = -(-T // bs)
    valid = sl.causal_block_mask(nb, nb)
    assert not (lay & ~valid).any()                       # nothing in the future
    assert lay[..., torch.arange(nb), torch.arange(nb)].all()   # the diagonal always
    kept = lay.sum(-1)                                    # [1, H, nq]
    want = torch.clamp(torch.arange(nb) + 1, max=K + 1)   # K + diagonal, or every visible block
    assert torch.equal(kept, want.expand_as(kept))


def test_random_layout_is_reproducible_per_layer_and_seed():
    q, k = _qk(320, seed=4)
    b = hip.Budget(block_size=16, k=3)
    a = hip.arm_layout("random", q, k, b, layer=5, seed=0)
    assert torch.equal(a, hip.arm_layout("random", q, k, b, layer=5, seed=0))
    assert not torch.equal(a, hip.arm_layout("random", q, k, b, layer=6, seed=0))


def test_block_scores_and_block_mass_match_brute_force():
    T, bs = 100, 16
    q, k = _qk(T, 2, 1, seed=5)
    scale = 1 / math.sqrt(16)
    full = (q @ k.transpose(-1, -2)) * scale
    causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]
    full = full.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(full, -1)
    nb = -(-T // bs)
    want_max = torch.full((1, 2, nb, nb), float("-inf"))
    want_mass = torch.zeros(1, 2, nb, nb)
    for r in range(nb):
        for c in range(nb):
            want_max[..., r, c] = full[..., r * bs:(r + 1) * bs, c * bs:(c + 1) * bs].amax((-1, -2))
            want_mass[..., r, c] = probs[..., r * bs:(r + 1) * bs, c * bs:(c + 1) * bs].sum(-1).mean(-1)
    assert torch.allclose(hip.block_max_scores(q, k, bs, chunk_elems=3000), want_max)
    mass = hip.block_mass(q, k, bs, chunk_elems=3000)
    assert torch.allclose(mass, want_mass, atol=1e-6)
    assert torch.allclose(mass.sum(-1), torch.ones(1, 2, nb), atol=1e-5)


def test_selection_quality_accounting():
    q, k = _qk(512, seed=6)
    b = hip.Budget(block_size=16, k=4)
    sq = hip.selection_quality(q, k, b)
    assert torch.allclose(sq["recall_exact.exact_topk"], torch.ones(4))
    for a in ("hip", "hip_center", "exact_topk", "streaming", "random"):
        assert (sq[f"mass.{a}"] <= sq["mass_oracle"] + 1e-5).all()        # no K blocks beat the best K
        assert (sq[f"mass.{a}"] >= sq["mass_diagonal"] - 1e-6).all()
        assert ((0 <= sq[f"recall_mass_topk.{a}"]) & (sq[f"recall_mass_topk.{a}"] <= 1)).all()
    with pytest.raises(ValueError, match="too short"):
        hip.selection_quality(*_qk(64), b)


def test_budget_and_input_checks():
    with pytest.raises(ValueError, match="power of two"):
        hip.Budget(block_size=24)
    with pytest.raises(ValueError, match="sink_blocks"):
        hip.Budget(k=2, sink_blocks=3)
    with pytest.raises(ValueError, match="representative"):
        hip.Budget(representative="middle")
    q, k = _qk(100)
    with pytest.raises(ValueError, match="Tq"):
        hip.hip_select(q[:, :, :90], k, hip.Budget(block_size=16))
    with pytest.raises(ValueError, match="unknown arm"):
        hip.arm_pattern("oracle", hip.Budget())
    with pytest.raises(ValueError, match="unknown arms"):
        chapter.check_arms(["dense", "hip", "h2o"])


@torch.inference_mode()
def test_patterns_on_a_tiny_llama(tiny_llama):
    ids = torch.randint(0, 97, (1, 128), generator=torch.Generator().manual_seed(0))
    with pt.apply(tiny_llama, pt.Dense()):
        dense = tiny_llama(input_ids=ids).logits
    full = hip.Budget(block_size=16, k=8)                 # 8 blocks: every row keeps every block
    for arm in ("hip", "exact_topk", "streaming", "random"):
        pat = hip.arm_pattern(arm, full)
        with pt.apply(tiny_llama, pat):
            out = tiny_llama(input_ids=ids).logits
        assert torch.allclose(out, dense, atol=1e-4), arm
        assert len(pat.stats) == 2 and all(d == 1.0 for _, d in pat.stats)
    sparse = hip.arm_pattern("hip", hip.Budget(block_size=16, k=1))
    with pt.apply(tiny_llama, sparse):
        out = tiny_llama(input_ids=ids).logits
    assert torch.allclose(out[:, :32], dense[:, :32], atol=1e-4)    # the first two blocks see everything
    assert not torch.allclose(out[:, 64:], dense[:, 64:], atol=1e-3)
    assert all(d < 0.5 for _, d in sparse.stats)


def test_chapter_statistics():
    # perplexity ratio: a constant NLL gap of log(2) is a 2× perplexity, bootstrapped over chunks
    n = 128
    ppl = {"a": {"nll": [1.0 + math.log(2)] * n, "doc": [0] * n}, "b": {"nll": [1.0] * n, "doc": [0] * n}}
    r = chapter.ppl_ratio(ppl, "a", "b", 32)
    assert r.n == 4 and abs(r.value - 2.0) < 1e-9
    # a time growing like N^2 has exponent 2
    rng = np.random.default_rng(0)
    speed = {N: {"hip": list((N / 1000) ** 2 * (1 + 0.01 * rng.standard_normal(5)))} for N in (1000, 4000)}
    assert abs(chapter.speed_exponent(speed, "hip").value - 2.0) < 0.05
