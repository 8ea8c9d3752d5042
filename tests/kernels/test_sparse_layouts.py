"""Layout builders for block-sparse attention (tokenbook.kernels.sparse_layouts), each against a
brute-force token-level or loop definition, plus one layout of each kind run through the kernel.
"""

from __future__ import annotations

import doctest

import pytest
import torch

from tokenbook.kernels import sparse_layouts as sl
from tokenbook.kernels.block_sparse_attention import block_sparse_attention
from tokenbook.kernels.block_sparse_attention_reference import block_sparse_attention_reference


def test_docstring_examples_run():
    result = doctest.testmod(sl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 7 and result.failed == 0


@pytest.mark.parametrize("nq,nk,sinks,window", [(6, 6, 1, 2), (3, 7, 2, 3), (1, 9, 1, 4), (5, 5, 0, 1),
                                                (4, 4, 4, 4)],
                         ids=lambda x: str(x))
def test_lambda_layout_matches_loop_definition(nq, nk, sinks, window):
    layout = sl.lambda_layout(nq, nk, sinks, window)
    assert layout.shape == (1, 1, nq, nk) and layout.dtype == torch.bool
    for r in range(nq):
        diag = r + nk - nq
        for c in range(nk):
            want = c <= diag and (c < sinks or diag - c < window)
            assert bool(layout[0, 0, r, c]) == want, (r, c)


def test_lambda_layout_rejects_bad_sizes():
    with pytest.raises(ValueError):
        sl.lambda_layout(5, 3, 1, 1)
    with pytest.raises(ValueError):
        sl.lambda_layout(3, 3, -1, 1)


def _token_vertical_slash(vertical, slash, q_len, k_len):
    """[B, H, Tq, Tk] token mask of the vertical-slash pattern, by loops (causal)."""
    B, H = max(vertical.shape[0], slash.shape[0]), vertical.shape[1]
    mask = torch.zeros(B, H, q_len, k_len, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(q_len):
                p = k_len - q_len + i
                for j in vertical[min(b, vertical.shape[0] - 1), h].tolist():
                    if 0 <= j <= p:
                        mask[b, h, i, j] = True
                for s in slash[min(b, slash.shape[0] - 1), h].tolist():
                    if s >= 0 and 0 <= p - s:
                        mask[b, h, i, p - s] = True
    return mask


def _blocks_touched(mask, bs):
    B, H, Tq, Tk = mask.shape
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    padded = torch.zeros(B, H, nq * bs, nk * bs, dtype=torch.bool)
    padded[..., :Tq, :Tk] = mask
    return padded.reshape(B, H, nq, bs, nk, bs).any(dim=(3, 5))


@pytest.mark.parametrize("q_len,k_len,bs", [(64, 64, 16), (37, 101, 16), (1, 90, 32), (50, 50, 32)],
                         ids=["prefill-64", "chunk-37-of-101", "decode-1-of-90", "prefill-50-bs32"])
def test_vertical_slash_layout_is_the_blocks_the_token_pattern_touches(q_len, k_len, bs):
    gen = torch.Generator().manual_seed(q_len + k_len)
    vertical = torch.randint(0, k_len, (1, 3, 4), generator=gen)
    slash = torch.randint(0, k_len, (1, 3, 3), generator=gen)
    slash[..., 0] = 0                 # the diagonal, as MInference always keeps
    vertical[0, 1, 2:] = -1           # padding: head 1 keeps only two vertical lines
    slash[0, 2, 1] = -1
    layout = sl.vertical_slash_layout(vertical[0], slash[0], q_len, k_len, bs)
    assert layout.shape == (1, 3, -(-q_len // bs), -(-k_len // bs))
    assert torch.equal(layout, _blocks_touched(_token_vertical_slash(vertical, slash, q_len, k_len), bs))


def test_vertical_slash_layout_batched_indices():
    vertical = torch.tensor([[[0, 5]], [[40, -1]]])   # [B=2, H=1, 2]
    slash = torch.tensor([[[0]], [[0]]])
    layout = sl.vertical_slash_layout(vertical, slash, 48, 48, 16)
    assert layout.shape == (2, 1, 3, 3)
    assert torch.equal(layout, _blocks_touched(_token_vertical_slash(vertical, slash, 48, 48), 16))


@pytest.mark.parametrize("Tq,Tk,bs,Hq,Hkv", [(130, 130, 64, 4, 2), (20, 70, 16, 3, 1)],
                         ids=["prefill-ragged-gqa2", "chunk-gqa3"])
def test_pooled_block_scores_match_loop(Tq, Tk, bs, Hq, Hkv):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, Hq, Tq, 8, generator=gen), torch.randn(2, Hkv, Tk, 8, generator=gen)
    scores = sl.pooled_block_scores(q, k, bs)
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    assert scores.shape == (2, Hq, nq, nk) and scores.dtype == torch.float32
    for b in range(2):
        for h in range(Hq):
            for r in range(nq):
                for c in range(nk):
                    qm = q[b, h, r * bs:(r + 1) * bs].mean(0)
                    km = k[b, h // (Hq // Hkv), c * bs:(c + 1) * bs].mean(0)
                    torch.testing.assert_close(scores[b, h, r, c], (qm @ km) / 8 ** 0.5)


def test_topk_layout_keeps_best_valid_blocks_diagonal_and_sinks():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 3, 6, 8, generator=gen)
    layout = sl.topk_layout(scores, 2, sink_blocks=1)
    valid = sl.causal_block_mask(6, 8)
    assert layout.shape == (2, 3, 6, 8) and not (layout & ~valid).any()
    for b in range(2):
        for h in range(3):
            for r in range(6):
                diag = r + 2
                cand = scores[b, h, r, :diag + 1]
                best = set(cand.topk(min(2, diag + 1)).indices.tolist())
                want = best | {diag, 0}
                assert set(torch.nonzero(layout[b, h, r]).flatten().tolist()) == want, (b, h, r)


def test_topk_layout_without_extras_and_non_causal():
    scores = torch.arange(12.0).reshape(3, 4)        # higher columns score higher
    plain = sl.topk_layout(scores, 1, keep_diagonal=False)
    assert plain[0, 0].int().tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    free = sl.topk_layout(scores, 2, causal=False, keep_diagonal=False)
    assert free[0, 0].int().tolist() == [[0, 0, 1, 1]] * 3
    assert sl.topk_layout(scores, 0, keep_diagonal=False).sum() == 0
    assert sl.topk_layout(scores, 99).sum() == sl.causal_block_mask(3, 4).sum()


def test_from_mask_shapes_and_checks():
    m = torch.eye(3, dtype=torch.bool)
    assert sl.from_mask(m).shape == (1, 1, 3, 3)
    assert sl.from_mask(m[None].expand(4, -1, -1)).shape == (1, 4, 3, 3)
    assert sl.from_mask(torch.eye(3, dtype=torch.int64)).dtype == torch.bool
    with pytest.raises(ValueError):
        sl.from_mask(torch.eye(3) * 0.5)
    with pytest.raises(ValueError):
        sl.from_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        sl.from_mask(torch.full((2, 2), 2))


def test_density():
    full = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    assert sl.density(full) == 1.0 and sl.density(full, causal=False) == 1.0
    assert sl.density(full.tril()) == 1.0 and sl.density(full.tril(), causal=False) == 10 / 16
    assert sl.density(torch.zeros(3, 3, dtype=torch.bool)) == 0.0
    # Λ with one sink and a window of 2 over 8x8 blocks: rows keep 1, 2, 3, 3, ... blocks.
    assert sl.density(sl.lambda_layout(8, 8, 1, 2)) == pytest.approx((1 + 2 + 3 * 6) / 36)
    # Only causally valid blocks count: the upper triangle adds nothing.
    assert sl.density(torch.ones(4, 4, dtype=torch.bool).triu()) == pytest.approx(4 / 10)


LAYOUT_KINDS = ["lambda", "vertical-slash", "topk-pooled", "from-mask"]


@pytest.mark.parametrize("kind", LAYOUT_KINDS, ids=str)
def test_layouts_drive_the_kernel(kernel_device, assert_close_op, kind):
    B, Hq, Hkv, T, D, bs = 1, 3, 1, 75, 32, 16
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, h, T, D, generator=gen).to(kernel_device) for h in (Hq, Hkv, Hkv))
    n = -(-T // bs)
    if kind == "lambda":
        layout = sl.lambda_layout(n, n, 1, 2, device=kernel_device)
    elif kind == "vertical-slash":
        layout = sl.vertical_slash_layout(torch.tensor([[3, 40]] * Hq), torch.tensor([[0, 20]] * Hq), T, T, bs)
    elif kind == "topk-pooled":
        layout = sl.topk_layout(sl.pooled_block_scores(q, k, bs), 1, sink_blocks=1)
    else:
        layout = sl.from_mask(torch.rand(Hq, n, n, generator=gen) < 0.4)
    layout = layout.to(kernel_device)
    out = block_sparse_attention(q, k, v, layout, block_size=bs, backend="triton")
    assert_close_op("block_sparse_attention", kind,
                    block_sparse_attention_reference(q, k, v, layout, block_size=bs), out)
