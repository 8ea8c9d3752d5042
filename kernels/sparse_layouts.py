"""Block layouts for :func:`tokenbook.kernels.block_sparse_attention.block_sparse_attention`.

Pure PyTorch (no Triton). Every builder returns a bool layout ``[B or 1, H or 1, nq, nk]``:
``layout[b, h, r, c]`` is True when query block ``r`` attends key block ``c``. ``nq`` and ``nk``
are numbers of blocks (``ceil(T / block_size)``).

Block-level causality: queries are the last positions of the sequence, so query block ``r`` is
aligned with key block ``r + nk - nq`` (its "diagonal" block; bottom-right alignment). Key block
``c`` is causally valid for row ``r`` iff ``c <= r + nk - nq``. That is exact when
``(Tk - Tq) % block_size == 0`` (prefill: ``Tq = Tk``) and when ``nq = 1`` (decoding); the kernel
itself always applies the exact token-level causal mask.

Patterns (the chapters that use them):

- :func:`lambda_layout` — Λ shape: a few sink blocks at the start plus a local window
  (LM-Infinite, StreamingLLM);
- :func:`vertical_slash_layout` — chosen key columns ("vertical") and diagonals ("slash"), given
  at token level per head, rounded out to blocks (MInference);
- :func:`topk_layout` — the ``k`` best-scoring key blocks per query block, plus the diagonal and
  optional sinks, from any block scores, e.g. :func:`pooled_block_scores` (HiP, Squeezed Attention);
- :func:`from_mask` — any boolean block mask, checked and shaped;
- :func:`density` — the fraction of causally valid blocks a layout keeps.
"""

from __future__ import annotations

import math

import torch

__all__ = ["causal_block_mask", "density", "from_mask", "lambda_layout", "pooled_block_scores",
           "topk_layout", "vertical_slash_layout"]


def causal_block_mask(n_q_blocks: int, n_k_blocks: int, device=None) -> torch.Tensor:
    """``[nq, nk]`` bool: key block ``c`` is causally valid for query block ``r`` (bottom-right aligned).

    Example::

        >>> causal_block_mask(2, 3).int().tolist()
        [[1, 1, 0], [1, 1, 1]]
    """
    rows = torch.arange(n_q_blocks, device=device)[:, None] + (n_k_blocks - n_q_blocks)
    return torch.arange(n_k_blocks, device=device)[None, :] <= rows


def lambda_layout(n_q_blocks: int, n_k_blocks: int, sink_blocks: int, window_blocks: int,
                  *, device=None) -> torch.Tensor:
    """Λ-shaped causal layout ``[1, 1, nq, nk]``: the first ``sink_blocks`` key blocks plus the
    ``window_blocks`` most recent ones (the diagonal block counts as one of them).

    Example::

        >>> lambda_layout(4, 4, sink_blocks=1, window_blocks=2)[0, 0].int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]]
    """
    if min(n_q_blocks, n_k_blocks, sink_blocks, window_blocks) < 0 or n_q_blocks > n_k_blocks:
        raise ValueError("need 0 <= n_q_blocks <= n_k_blocks and non-negative sink/window sizes, got "
                         f"{n_q_blocks}, {n_k_blocks}, {sink_blocks}, {window_blocks}")
    diag = torch.arange(n_q_blocks, device=device)[:, None] + (n_k_blocks - n_q_blocks)
    cols = torch.arange(n_k_blocks, device=device)[None, :]
    keep = (cols < sink_blocks) | (diag - cols < window_blocks)
    return (keep & (cols <= diag))[None, None]


def vertical_slash_layout(vertical_indices: torch.Tensor, slash_indices: torch.Tensor, q_len: int,
                          k_len: int, block_size: int = 64) -> torch.Tensor:
    """MInference's vertical-slash pattern, rounded out to blocks.

    Args:
        vertical_indices: int ``[H, Nv]`` or ``[B, H, Nv]``: key positions (token level) that every
            later query attends ("vertical" lines). Negative entries are padding and ignored, so
            heads may keep different numbers.
        slash_indices: int ``[H, Ns]`` or ``[B, H, Ns]``: diagonal offsets ``s >= 0``; query at
            absolute position ``p`` attends key ``p - s`` ("slash" lines; ``s = 0`` is the
            diagonal). Negative entries are padding.
        q_len, k_len: token lengths; queries are the last ``q_len`` of ``k_len`` positions.
    Returns:
        bool ``[B or 1, H, ceil(q_len / bs), ceil(k_len / bs)]``: every block that any chosen token
        of the pattern falls in (a superset of the token pattern, as MInference's block kernels use).

    Example::

        >>> v = torch.tensor([[0]]); s = torch.tensor([[0, 64]])
        >>> vertical_slash_layout(v, s, 256, 256, 64)[0, 0].int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]]
    """
    if vertical_indices.dim() == 2:
        vertical_indices = vertical_indices[None]
    if slash_indices.dim() == 2:
        slash_indices = slash_indices[None]
    if vertical_indices.dim() != 3 or slash_indices.dim() != 3:
        raise ValueError("vertical_indices and slash_indices must be [H, N] or [B, H, N]")
    B = max(vertical_indices.shape[0], slash_indices.shape[0])
    H = vertical_indices.shape[1]
    if slash_indices.shape[1] != H:
        raise ValueError(f"vertical and slash indices must have the same heads, got {H} and {slash_indices.shape[1]}")
    device = vertical_indices.device
    nq, nk = -(-q_len // block_size), -(-k_len // block_size)
    rows = torch.arange(nq, device=device)
    first = (k_len - q_len) + rows * block_size                                # [nq] first query position
    last = (k_len - q_len) + torch.clamp((rows + 1) * block_size, max=q_len) - 1  # [nq] last query position
    layout = torch.zeros(B, H, nq, nk, dtype=torch.bool, device=device)

    # Vertical: key j is seen by every query at a position >= j -> rows whose last query >= j.
    vert = vertical_indices.long().expand(B, H, -1)
    valid = (vert >= 0) & (vert < k_len)
    seen = valid[:, :, None, :] & (vert[:, :, None, :] <= last[None, None, :, None])  # [B, H, nq, Nv]
    col = torch.where(valid, vert // block_size, 0)[:, :, None, :].expand(-1, -1, nq, -1)
    layout |= _scatter_or(col, seen, nk)

    # Slash s: the row's queries p in [first, last] attend keys p - s in [first - s, last - s].
    # That span is shorter than a block, so it touches at most two key blocks.
    slash = slash_indices.long().expand(B, H, -1)
    s = slash[:, :, None, :]                                                   # [B, H, 1, Ns]
    lo = first[None, None, :, None] - s                                        # [B, H, nq, Ns]
    hi = last[None, None, :, None] - s
    hit = (s >= 0) & (hi >= 0)
    for key in (lo.clamp(min=0), hi.clamp(min=0)):
        layout |= _scatter_or(torch.clamp(key // block_size, max=nk - 1), hit & (key < k_len), nk)
    return layout


def _scatter_or(col: torch.Tensor, hit: torch.Tensor, nk: int) -> torch.Tensor:
    """``out[..., c] = any(hit[..., n] for n with col[..., n] == c)``; col/hit ``[..., N]``."""
    out = torch.zeros(*col.shape[:-1], nk, dtype=torch.int32, device=col.device)
    out.scatter_add_(-1, col, hit.to(torch.int32))
    return out > 0


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, block_size: int = 64,
                        scale: float | None = None) -> torch.Tensor:
    """Mean-pooled block scores ``[B, Hq, nq, nk]`` (fp32): ``scale * mean(q block) . mean(k block)``.

    q ``[B, Hq, Tq, D]``, k ``[B, Hkv, Tk, D]`` (GQA: head ``h`` reads ``h // (Hq / Hkv)``). A ragged
    last block is averaged over its real tokens only. The cheap block-importance estimate that
    top-k layouts are chosen from.

    Example::

        >>> q, k = torch.randn(1, 2, 130, 16), torch.randn(1, 1, 130, 16)
        >>> pooled_block_scores(q, k, 64).shape
        torch.Size([1, 2, 3, 3])
    """
    D = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    group = q.shape[1] // k.shape[1]
    q_mean = _block_mean(q.float(), block_size)
    k_mean = _block_mean(k.float(), block_size).repeat_interleave(group, dim=1)
    return (q_mean @ k_mean.transpose(-1, -2)) * scale


def _block_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., T, D]`` -> ``[..., ceil(T / bs), D]``, mean over each block's real tokens."""
    T = x.shape[-2]
    n = -(-T // block_size)
    padded = torch.nn.functional.pad(x, (0, 0, 0, n * block_size - T))
    sums = padded.reshape(*x.shape[:-2], n, block_size, x.shape[-1]).sum(-2)
    sizes = torch.clamp(T - torch.arange(n, device=x.device) * block_size, max=block_size)
    return sums / sizes[:, None].to(x.dtype)


def topk_layout(scores: torch.Tensor, k: int, *, causal: bool = True, keep_diagonal: bool = True,
                sink_blocks: int = 0) -> torch.Tensor:
    """Keep the ``k`` highest-scoring key blocks per query block (HiP / Squeezed Attention style).

    Args:
        scores: ``[B, H, nq, nk]`` (or ``[H, nq, nk]`` / ``[nq, nk]``) block scores, e.g. from
            :func:`pooled_block_scores` or centroid scores.
        k: blocks chosen by score per row, among the causally valid ones (with ``causal``);
            the diagonal and sinks are added on top and do not count against ``k``.
        keep_diagonal: always keep each row's diagonal block (a query then sees at least itself).
        sink_blocks: always keep the first ``sink_blocks`` key blocks (where causally valid).
    Returns:
        bool ``[B, H, nq, nk]``.

    Example::

        >>> s = torch.tensor([[0., 0, 0], [5, 0, 0], [0, 9, 1]])
        >>> topk_layout(s, 1)[0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    while scores.dim() < 4:
        scores = scores[None]
    nq, nk = scores.shape[-2:]
    valid = causal_block_mask(nq, nk, scores.device) if causal else torch.ones(
        nq, nk, dtype=torch.bool, device=scores.device)
    masked = scores.float().masked_fill(~valid, float("-inf"))
    k = max(0, min(int(k), nk))
    layout = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        top = masked.topk(k, dim=-1).indices
        layout.scatter_(-1, top, True)
    layout &= valid  # a row with fewer than k valid blocks picked some -inf ones
    cols = torch.arange(nk, device=scores.device)
    if keep_diagonal:
        diag = torch.arange(nq, device=scores.device)[:, None] + (nk - nq)
        layout |= (cols[None, :] == diag) & valid
    if sink_blocks > 0:
        layout |= (cols[None, :] < sink_blocks) & valid
    return layout


def from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Check and shape an arbitrary block mask: ``[nq, nk]``, ``[H, nq, nk]`` or ``[B, H, nq, nk]``
    (bool, or 0/1 integers) -> contiguous bool ``[B or 1, H or 1, nq, nk]``.

    Example::

        >>> from_mask(torch.eye(3, dtype=torch.bool)).shape
        torch.Size([1, 1, 3, 3])
    """
    if not isinstance(mask, torch.Tensor) or not 2 <= mask.dim() <= 4:
        raise ValueError("a block mask must be a tensor [nq, nk], [H, nq, nk] or [B, H, nq, nk]")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"a block mask must be bool or 0/1 integers, got {mask.dtype}")
        mask = mask.bool()
    while mask.dim() < 4:
        mask = mask[None]
    return mask.contiguous()


def density(layout: torch.Tensor, causal: bool = True) -> float:
    """Fraction of the causally valid blocks (all blocks with ``causal=False``) a layout keeps,
    over every batch element and head. Kept blocks that are not causally valid are not counted.

    Example::

        >>> density(lambda_layout(4, 4, sink_blocks=1, window_blocks=1))  # 7 of 10 valid blocks
        0.7
    """
    layout = from_mask(layout)
    nq, nk = layout.shape[-2:]
    if causal:
        valid = causal_block_mask(nq, nk, layout.device)
    else:
        valid = torch.ones(nq, nk, dtype=torch.bool, device=layout.device)
    total = int(valid.sum()) * layout.shape[0] * layout.shape[1]
    return float((layout & valid).sum()) / total if total else 0.0
