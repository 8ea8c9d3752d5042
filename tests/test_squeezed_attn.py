"""Squeezed Attention's invariants: k-means, the centroid score, the cluster lookup, the exactness of
attention over the kept keys (on a tiny random Llama), thresholds, the decode gather path."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from tokenbook.chapters import squeezed_attn as chapter
from tokenbook.longctx import patterns as pt
from tokenbook.longctx import selection as sel
from tokenbook.longctx import squeezed as sq


def blobs(G=2, k=5, per=40, D=8, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(G, k, D, generator=g), dim=-1)
    x = centers[:, :, None] + noise * torch.randn(G, k, per, D, generator=g)
    truth = torch.arange(k).repeat_interleave(per)
    return x.reshape(G, k * per, D), truth


# ---- k-means ---------------------------------------------------------------------------------


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    x, truth = blobs()
    c, lab, inertia = sq.kmeans(x, 5, seed=3)
    for g in range(2):      # the same partition as the truth, up to renaming
        pairs = set(zip(truth.tolist(), lab[g].tolist()))
        assert len(pairs) == 5 and len({a for a, _ in pairs}) == 5 and len({b for _, b in pairs}) == 5
    c2, lab2, _ = sq.kmeans(x, 5, seed=3)
    assert torch.equal(lab, lab2) and torch.equal(c, c2)
    assert c.shape == (2, 5, 8) and torch.allclose(c.norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_kmeans_converges_to_a_fixed_point_and_lowers_inertia():
    x = torch.randn(3, 300, 6, generator=torch.Generator().manual_seed(1))
    _, _, start = sq.kmeans(x, 12, iters=0, seed=0, init="random")
    c, lab, end = sq.kmeans(x, 12, iters=100, seed=0, init="random")
    assert torch.all(end <= start + 1e-4)
    xn = torch.nn.functional.normalize(x, dim=-1)
    assert torch.equal(lab, (xn @ c.transpose(-1, -2)).argmax(-1))   # every point at its nearest centroid


def test_kmeans_edge_cases():
    x = torch.randn(1, 7, 4)
    _, lab, inertia = sq.kmeans(x, 50)             # more clusters than points: each point its own
    assert sorted(lab[0].tolist()) == list(range(7)) and float(inertia[0]) < 1e-6
    _, lab, _ = sq.kmeans(x, 1)
    assert lab.unique().tolist() == [0]
    with pytest.raises(ValueError):
        sq.kmeans(x[0], 2)
    with pytest.raises(ValueError):
        sq.kmeans(x, 2, init="bogus")


def test_chunked_assignment_matches_one_block():
    x = torch.nn.functional.normalize(torch.randn(2, 500, 8), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(2, 30, 8), dim=-1)
    assert torch.equal(sq._assign(x, c, True, chunk_elems=100), sq._assign(x, c, True))


# ---- the index and the score -----------------------------------------------------------------


def index_of(H=2, N=120, D=8, C=10, coarse=None, seed=0):
    keys = torch.randn(H, N, D, generator=torch.Generator().manual_seed(seed))
    return keys, sq.build_index(keys, C, n_coarse=coarse, seed=seed)


def test_index_layout_is_consistent():
    keys, idx = index_of(coarse=3)
    H, N = idx.labels.shape
    assert torch.equal(idx.counts.sum(-1), torch.full((H,), float(N)))
    for h in range(H):
        for j in range(idx.n_clusters):
            members = idx.order[h, idx.offsets[h, j]:idx.offsets[h, j + 1]]
            assert torch.all(idx.labels[h, members] == j)
            if len(members):
                torch.testing.assert_close(idx.centroids[h, j], keys[h, members].mean(0))
    assert torch.equal(idx.coarse_counts.sum(-1), torch.full((H,), float(N)))
    assert int(idx.parent.max()) < idx.coarse.shape[1]


def test_scores_are_an_estimated_softmax():
    keys, idx = index_of()
    q = torch.randn(2, 4, 3, 8)                                              # [B, Hq, Tq, D], G = 2
    s = sq.cluster_scores(q, idx.centroids, idx.counts, 0.3)
    total = (s * idx.counts.repeat_interleave(2, 0)[:, None]).sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total))
    # with every key its own cluster, the estimate is the exact attention
    one = sq.build_index(keys, keys.shape[1])
    s1 = sq.key_scores(sq.cluster_scores(q, one.centroids, one.counts, 0.3), one.labels.repeat_interleave(2, 0))
    exact = torch.softmax(torch.einsum("bhtd,hnd->bhtn", q, keys.repeat_interleave(2, 0)) * 0.3, -1)
    torch.testing.assert_close(s1, exact, atol=1e-6, rtol=1e-4)


def test_top_cluster_keys_take_whole_clusters_best_first():
    keys, idx = index_of(N=200, C=15)
    s = sq.group_mean(sq.cluster_scores(torch.randn(4, 5, 8), idx.centroids, idx.counts, 0.5), 2)   # [Hkv, Tq, C]
    for budget in (1, 37, 100, 200):
        got = sq.top_cluster_keys(s, idx, budget)
        assert got.shape == (2, 5, budget)
        assert all(len(set(row.tolist())) == budget for row in got.reshape(-1, budget))
        kept = sq.indices_to_mask(got, 200)
        ks = sq.key_scores(s, idx.labels)
        lo = torch.where(kept, ks, torch.inf).amin(-1, keepdim=True)        # the worst kept key's score
        assert torch.all(kept | (ks <= lo))                                 # nothing better was left out
        assert torch.all(~kept | (ks >= lo))
    # on a cluster boundary it is exactly the top-k of the key scores
    rank = torch.sort(s, dim=-1, descending=True, stable=True).indices
    sizes = sq._take(idx.counts.long(), rank).cumsum(-1)
    b = int(sizes[0, 0, 4])
    got = sq.indices_to_mask(sq.top_cluster_keys(s[:1, :1], sq.slice_index(idx, slice(0, 1)), b), 200)
    assert got.sum() == b and torch.equal(got, sq.topk_mask(ks[:1, :1], b) | got)


def test_budget_mask_keeps_per_row_budgets():
    idx = torch.stack([torch.randperm(30)[:10] for _ in range(3)])[:, None]      # [r=3, 1, 10]
    m = sq.budget_mask(idx, 30, torch.tensor([0, 4, 10]))
    assert m.sum((-1, -2)).tolist() == [0, 4, 10]
    assert torch.equal(m[1, 0].nonzero()[:, 0].sort().values, idx[1, 0, :4].sort().values)


def test_hierarchical_with_every_coarse_cluster_is_the_flat_lookup():
    keys, idx = index_of(coarse=4)
    q = torch.randn(4, 3, 8)
    s2, compared = sq.hierarchical_scores(q, idx, 0.4, budget=120, expand=1.0)       # needs every key
    flat = sq.group_mean(sq.cluster_scores(q, idx.centroids, idx.counts, 0.4), 2)
    torch.testing.assert_close(s2, flat)
    assert torch.all(compared == 4 + idx.n_clusters)
    s3, fewer = sq.hierarchical_scores(q, idx, 0.4, budget=10, expand=1.0)
    assert torch.all(fewer < 4 + idx.n_clusters)
    assert torch.all((s3 > 0).sum(-1) < idx.n_clusters)
    with pytest.raises(ValueError):
        sq.hierarchical_scores(q, index_of()[1], 0.4, 10)


def test_calibrated_threshold_keeps_the_target_fraction_on_its_own_queries():
    keys, idx = index_of(N=400, C=20)
    qs = [torch.randn(4, 32, 8)]
    taus = sq.calibrate_thresholds([idx], qs, 0.4, [0.5, 0.125])
    s = sq.group_mean(sq.cluster_scores(qs[0], idx.centroids, idx.counts, 0.4), 2)
    for f, tau in taus.items():
        kept = float((sq.key_scores(s, idx.labels) > tau).float().mean())
        assert abs(kept - f) < 0.08, (f, kept)
    assert taus[0.125] > taus[0.5]
    assert sq.weighted_quantile(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 2.0]), 0.5) == 2.0


# ---- the attention pattern on a tiny model -----------------------------------------------------


def fixed_context(model, n=40, seed=0):
    ids = torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))
    fc, qobs, _ = sq.prepare(model, ids, cluster_frac=0.25, coarse_frac=0.5, iters=10, obs_window=8)
    return ids, fc, qobs


@torch.inference_mode()
def run_arms(model, fc, user, arms):
    N, T = fc.n, user.shape[1]
    pat = sq.FixedContextAttention(fc, arms)
    with pt.apply(model, pat):
        out = model(input_ids=user.expand(len(arms), -1),
                    position_ids=torch.arange(N, N + T)[None].expand(len(arms), -1))
    return out.logits, pat


def test_dense_arm_is_the_full_model_and_none_is_the_user_input_alone(tiny_llama):
    ids, fc, _ = fixed_context(tiny_llama)
    user = torch.randint(1, 97, (1, 9), generator=torch.Generator().manual_seed(5))
    logits, pat = run_arms(tiny_llama, fc, user, [sq.Arm("dense"), sq.Arm("none"), sq.Arm("squeezed", 1.0)])
    with torch.inference_mode():
        full = tiny_llama(input_ids=torch.cat([ids, user], 1)).logits[0, -9:]
        alone = tiny_llama(input_ids=user).logits[0]          # RoPE is relative: positions N.. or 0.. alike
    torch.testing.assert_close(logits[0], full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[2], full, atol=1e-4, rtol=1e-4)
    summ = pat.summary()
    assert summ["dense"]["kept"] == 1.0 and summ["none"]["kept"] == 0.0 and summ["dense"]["recall"] == pytest.approx(1.0)


def test_every_arm_keeps_its_budget_and_sparse_arms_change_the_output(tiny_llama):
    ids, fc, qobs = fixed_context(tiny_llama)
    scale = sel.decoder_layers(tiny_llama)[0].self_attn.scaling
    taus = sq.calibrate_thresholds(fc.index, qobs, scale, [0.25])
    user = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(6))
    arms = [sq.Arm("dense")] + [sq.Arm(k, 0.25) for k in ("squeezed", "hierarchical", "window", "random", "oracle")]
    arms.append(sq.Arm("threshold", 0.25, taus[0.25]))
    logits, pat = run_arms(tiny_llama, fc, user, arms)
    summ = pat.summary()
    for a in arms[1:-1]:
        assert summ[a.name]["kept"] == pytest.approx(math.ceil(0.25 * 40) / 40), a.name
        assert not torch.allclose(logits[0], logits[arms.index(a)], atol=1e-3), a.name
    assert summ["oracle@0.25"]["recall"] >= max(summ[a.name]["recall"] for a in arms[1:]) - 1e-6
    assert summ["squeezed@0.25"]["compared"] == fc.index[0].n_clusters
    assert 0 < summ["threshold@0.25"]["kept"] < 1


def test_masked_attention_equals_attention_over_the_gathered_keys():
    g = torch.Generator().manual_seed(2)
    H, G, N, Tu, D = 2, 2, 30, 4, 8
    K0, V0 = torch.randn(H, N, D, generator=g), torch.randn(H, N, D, generator=g)
    fc = sq.FixedContext([K0], [V0], [sq.build_index(K0, 6)], [torch.rand(H, N, generator=g).argsort(-1)])
    q = torch.randn(1, H * G, 3, D, generator=g)
    k, v = torch.randn(1, H, Tu, D, generator=g), torch.randn(1, H, Tu, D, generator=g)
    pat = sq.FixedContextAttention(fc, [sq.Arm("random", 0.3)])
    out = pat(q, k, v, scale=0.35, layer=0)
    keep = fc.random[0] < math.ceil(0.3 * N)                            # [H, N]
    for h in range(H * G):
        kv = h // G
        kk = torch.cat([K0[kv, keep[kv]], k[0, kv]])
        vv = torch.cat([V0[kv, keep[kv]], v[0, kv]])
        n_fixed = int(keep[kv].sum())
        for t in range(3):                                               # query t sees user keys 0..Tu-3+t
            vis = n_fixed + Tu - 3 + t + 1
            p = torch.softmax(q[0, h, t] @ kk[:vis].T * 0.35, -1)
            torch.testing.assert_close(out[0, h, t], p @ vv[:vis], atol=1e-5, rtol=1e-5)


def test_window_keeps_sinks_and_the_most_recent_keys():
    K0 = torch.randn(1, 20, 4)
    fc = sq.FixedContext([K0], [K0], [sq.build_index(K0, 4)], [torch.arange(20)[None]])
    pat = sq.FixedContextAttention(fc, [sq.Arm("window", 0.4)], sinks=3)
    keep, _ = pat.keep_masks(torch.randn(1, 1, 2, 4), 0, 0.5, None)
    assert keep[0, 0, 0].nonzero()[:, 0].tolist() == [0, 1, 2, 15, 16, 17, 18, 19]


def test_gathered_decode_step_equals_masked_attention():
    g = torch.Generator().manual_seed(4)
    H, G, N, D = 2, 3, 90, 8
    K, V, q = torch.randn(H, N, D, generator=g), torch.randn(H, N, D, generator=g), torch.randn(H * G, D, generator=g)
    idx = sq.build_index(K, 9)
    torch.testing.assert_close(sq.gathered_decode_attention(q, K, V, idx, N, 0.3), sq.dense_decode_attention(q, K, V, 0.3),
                               atol=1e-5, rtol=1e-5)
    out = sq.gathered_decode_attention(q, K, V, idx, 25, 0.3)
    s = sq.group_mean(sq.cluster_scores(q[:, None], idx.centroids, idx.counts, 0.3), H)
    keep = sq.indices_to_mask(sq.top_cluster_keys(s, idx, 25)[:, 0], N)
    for h in range(H * G):
        p = torch.softmax((q[h] @ K[h // G].T * 0.3).masked_fill(~keep[h // G], -torch.inf), -1)
        torch.testing.assert_close(out[h], p @ V[h // G], atol=1e-5, rtol=1e-5)


def test_arm_and_config_validation():
    with pytest.raises(ValueError):
        sq.Arm("bogus")
    with pytest.raises(ValueError):
        sq.Arm("squeezed", 1.5)
    with pytest.raises(ValueError):
        sq.Arm("threshold", 0.3)
    cfg = OmegaConf.create({"kinds": ["squeezed", "window"], "headline": "squeezed", "fractions": [0.333, 0.125],
                            "claim_fraction": 0.333, "claim_fraction_small": 0.125, "cluster_frac": 0.05})
    chapter._check(cfg)
    for bad in ({"kinds": ["dense"]}, {"fractions": [0.333, 1.0]}, {"headline": "oracle"}, {"claim_fraction": 0.5}):
        with pytest.raises(ValueError):
            chapter._check(OmegaConf.merge(cfg, bad))
    names = [a.name for a in chapter.arms(cfg, {0.333: 1e-3, 0.125: 2e-3})]
    assert names == ["dense", "none", "squeezed@0.333", "window@0.333", "squeezed@0.125", "window@0.125"]


def test_claims_and_figure_from_a_synthetic_evaluation():
    import tokenbook
    run = tokenbook.setup("squeezed-attn", "cpu")
    cfg = run.cfg.chapter
    names = [a.name for a in chapter.arms(cfg, {float(f): 1e-3 for f in cfg.fractions})]
    rng = torch.Generator().manual_seed(0)
    items = []
    for i in range(12):
        r = torch.rand(len(names), generator=rng).tolist()
        items.append({"tokens": 1500, **{k: dict(zip(names, r)) for k in ("f1", "hit", "nll", "kept", "recall", "compared")}})
    mean = lambda k: {a: sum(p[k][a] for p in items) / len(items) for a in names}  # noqa: E731
    ev = {"arms": names, "items": items, "offline": [{"clusters": 75, "coarse": 9}],
          **{k: mean(k) for k in ("f1", "hit", "nll", "kept", "recall", "compared")}}
    sp = {"16384": {"tokens": 16384, "clusters": 819,
                    "times_s": {"dense": [2.0, 2.1, 2.2], "squeezed@0.333": [1.0, 1.1, 1.0], "squeezed@0.125": [0.5, 0.6, 0.5]}}}
    chapter.check_claims(run, ev, sp)
    got = {c["id"]: c for c in run._claims}
    assert {"budget.third_no_loss", "budget.eighth_small_loss", "selection.beats_window", "selection.beats_random",
            "hierarchical.matches_flat", "speed.decode"} <= set(got)
    assert got["speed.decode"]["verdict"] == "not testable at this scale"
    assert got["speed.decode"]["measured"]["value"] == pytest.approx(2.1 / 0.5)
    assert all(c["verdict"] != "not testable at this scale" for k, c in got.items() if k != "speed.decode")
    fig = chapter.plot(ev, sp, cfg)
    assert len(fig.axes) == 4


def test_batched_answer_matches_plain_greedy_decoding_and_nll(tiny_llama):
    ids, fc, _ = fixed_context(tiny_llama, n=30, seed=3)
    user = torch.randint(1, 97, (1, 5), generator=torch.Generator().manual_seed(8))
    ref = [11, 12, 13]
    cfg = OmegaConf.create({"sinks": 4, "expand": 2.0})
    gen, nll, summ = chapter.answer(tiny_llama, fc, [sq.Arm("dense"), sq.Arm("window", 0.2)], user, ref, 6, set(), cfg)
    full = torch.cat([ids, user], 1)
    with torch.inference_mode():
        out = tiny_llama(input_ids=full, use_cache=True)
        want = sel.greedy_decode(tiny_llama, out.past_key_values, out.logits[0, -1], full.shape[1], 6)
        lp = tiny_llama(input_ids=torch.cat([full, torch.tensor([ref])], 1)).logits[0, -4:-1].log_softmax(-1)
    assert gen[0] == want and len(gen[1]) == 6
    assert nll[0] == pytest.approx(float(-lp[torch.arange(3), ref].mean()), abs=1e-4)
    assert summ["window@0.2"]["kept"] == pytest.approx(6 / 30)
