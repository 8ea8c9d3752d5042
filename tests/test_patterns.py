"""The shared attention-pattern toolkit on tiny random Llamas: RoPE re-rotation, Λ attention with a
distance cap against a brute-force reference, and model-level switching."""

import pytest
import torch

from tokenbook.longctx import patterns as pt




def inv_freq(D=16, theta=100.0):
    return 1.0 / theta ** (torch.arange(0, D, 2).float() / D)


def roped(T, H, D, seed):
    """Random vectors rotated at positions 0..T-1, as HF hands them to attention."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, H, T, D, generator=g)
    return pt.rotate(x, torch.arange(T), inv_freq(D))


def test_rotate_composes_and_inverts():
    x = torch.randn(2, 3, 5, 16)
    f = inv_freq()
    d1, d2 = torch.tensor([1, -2, 3, 0, 7]), torch.tensor([4, 4, -1, 2, 0])
    torch.testing.assert_close(pt.rotate(pt.rotate(x, d1, f), d2, f), pt.rotate(x, d1 + d2, f), atol=1e-5, rtol=0)
    torch.testing.assert_close(pt.rotate(pt.rotate(x, d1, f), -d1, f), x, atol=1e-5, rtol=0)


def test_rotated_scores_depend_on_distance_only():
    q0, k0, f = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16), inv_freq()
    s = [float((pt.rotate(q0, torch.tensor([i]), f) * pt.rotate(k0, torch.tensor([i - 3]), f)).sum()) for i in (3, 10, 40)]
    assert max(s) - min(s) < 1e-4


@pytest.mark.parametrize("T, Tq, sinks, window, cap, chunk", [
    (40, 40, 2, 8, 8, 7), (40, 40, 0, 8, None, 16), (40, 40, 3, 8, None, 5), (33, 5, 2, 6, 6, 2),
    (30, 1, 4, 10, 10, 512), (24, 24, 2, 100, 100, 8), (50, 50, 4, 8, 12, 9)])
def test_lambda_attention_matches_brute_force(T, Tq, sinks, window, cap, chunk):
    q, k, v = roped(T, 4, 16, 0)[:, :, T - Tq:], roped(T, 2, 16, 1), torch.randn(1, 2, T, 16)
    got = pt.lambda_attention(q, k, v, sinks=sinks, window=window, cap=cap, inv_freq=inv_freq(), chunk=chunk)
    ref = pt.lambda_attention_reference(q, k, v, sinks=sinks, window=window, cap=cap, inv_freq=inv_freq())
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_distance_cap_changes_only_sink_scores():
    q, k, v = roped(40, 2, 16, 3), roped(40, 2, 16, 4), torch.randn(1, 2, 40, 16)
    a = pt.lambda_attention(q, k, v, sinks=2, window=8, cap=8, inv_freq=inv_freq())
    b = pt.lambda_attention(q, k, v, sinks=2, window=8, cap=None, inv_freq=inv_freq())
    torch.testing.assert_close(a[:, :, :9], b[:, :, :9])   # i <= cap: the cap changes no distance
    assert (a[:, :, 20:] - b[:, :, 20:]).abs().max() > 1e-3


def test_wide_lambda_is_causal_attention():
    q, k, v = roped(30, 4, 16, 5), roped(30, 2, 16, 6), torch.randn(1, 2, 30, 16)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                             is_causal=True)
    got = pt.lambda_attention(q, k, v, sinks=0, window=30, cap=None, chunk=7)
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)


def test_model_with_patterns_matches_reference_attention(tiny_llama):
    ids = torch.randint(0, 97, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base = tiny_llama(input_ids=ids).logits
        with pt.apply(tiny_llama, pt.Dense()):
            dense = tiny_llama(input_ids=ids).logits
        with pt.apply(tiny_llama, pt.Lambda(sinks=0, window=1000)):
            wide = tiny_llama(input_ids=ids).logits
        f = pt.rope_inv_freq(tiny_llama)
        lam = pt.Lambda(sinks=3, window=12, cap=12, inv_freq=f, chunk=10)
        with pt.apply(tiny_llama, lam):
            got = tiny_llama(input_ids=ids).logits

        def brute(q, k, v, *, scale, layer):
            return pt.lambda_attention_reference(q, k, v, sinks=3, window=12, cap=12, inv_freq=f, scale=scale)
        with pt.apply(tiny_llama, brute):
            ref = tiny_llama(input_ids=ids).logits
    torch.testing.assert_close(dense, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wide, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - base).abs().max() > 1e-3                          # the pattern really changed something
    assert tiny_llama.config._attn_implementation == "sdpa"          # switched back afterwards


def test_pattern_with_kv_cache_matches_one_pass(tiny_llama):
    """Prefill a prefix, then continue against the cache: same logits as one Λ pass (positions line up)."""
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    lam = pt.Lambda(sinks=2, window=10, cap=10, inv_freq=pt.rope_inv_freq(tiny_llama), chunk=6)
    with torch.inference_mode(), pt.apply(tiny_llama, lam):
        full = tiny_llama(input_ids=ids).logits
        out = tiny_llama(input_ids=ids[:, :25], use_cache=True)
        cache = out.past_key_values
        rest = tiny_llama(input_ids=ids[:, 25:], past_key_values=cache, use_cache=True).logits
        pt.truncate_cache(cache, 25)
        again = tiny_llama(input_ids=ids[:, 25:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 25:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, rest, atol=1e-5, rtol=1e-5)


def test_apply_rejects_wrong_layer_count(tiny_llama):
    with pytest.raises(ValueError, match="patterns for"):
        with pt.apply(tiny_llama, [pt.Dense()] * 3):
            pass


def test_capped_lambda_without_the_cpu_lse_path(monkeypatch):
    """The concatenated-head-dim path (used off CPU) gives the same numbers as the CPU merge."""
    q, k, v = roped(40, 4, 16, 7), roped(40, 2, 16, 8), torch.randn(1, 2, 40, 16)
    a = pt.lambda_attention(q, k, v, sinks=3, window=8, cap=8, inv_freq=inv_freq(), chunk=7)
    monkeypatch.setattr(pt, "USE_CPU_LSE", False)
    b = pt.lambda_attention(q, k, v, sinks=3, window=8, cap=8, inv_freq=inv_freq(), chunk=7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_block_sparse_pattern_full_layout_is_dense(tiny_llama):
    """A layout that keeps every block reproduces dense attention through the kernel's twin."""
    from tokenbook.kernels.sparse_layouts import causal_block_mask
    ids = torch.randint(0, 97, (1, 70), generator=torch.Generator().manual_seed(5))
    full = pt.BlockSparse(lambda q, k, layer: causal_block_mask(5, 5)[None, None], block_size=16)
    with torch.inference_mode():
        base = tiny_llama(input_ids=ids).logits
        with pt.apply(tiny_llama, full):
            got = tiny_llama(input_ids=ids).logits
    torch.testing.assert_close(got, base, atol=1e-4, rtol=1e-4)
    assert [d for _, d in full.stats] == [1.0, 1.0]


def test_search_helpers_on_captured_attention(tiny_llama):
    from tokenbook.kernels.sparse_layouts import causal_block_mask, lambda_layout, vertical_slash_layout
    ids = torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(6))
    qk = pt.capture_qk(tiny_llama, ids)
    assert sorted(qk) == [0, 1] and qk[0][0].shape == (1, 4, 64, 16) and qk[0][1].shape == (1, 2, 64, 16)
    probs = pt.last_query_attention(*qk[1], n_last=8)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 8))
    full = pt.layout_recall(probs, causal_block_mask(4, 4)[None, None], 16)
    torch.testing.assert_close(full, torch.ones(1, 4))
    part = pt.layout_recall(probs, lambda_layout(4, 4, 1, 1), 16)
    assert (part < 1).all() and (part > 0).all()
    v, s = pt.vertical_slash_indices(probs, n_vertical=6, n_slash=4, n_last_forced=2)
    assert v.shape == (1, 4, 6) and s.shape == (1, 4, 4)
    assert set(range(4)) <= set(v[0, 0].tolist()) and {0, 1} <= set(s[0, 0].tolist())
    vs = pt.layout_recall(probs, vertical_slash_layout(v[0], s[0], 64, 64, 16), 16)
    assert (vs > 0).all() and (vs <= 1 + 1e-5).all()
