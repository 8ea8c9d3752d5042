"""Readable PyTorch twin of :mod:`tokenbook.kernels.block_sparse_attention`.

Block-sparse attention: the ``Tq x Tk`` score matrix is cut into ``block_size x block_size``
tiles and a boolean ``layout`` says, per batch element, query head and query block, which key
blocks are attended to. The twin expands that layout to a token-level mask and runs plain dense
masked attention in fp32; it is the specification the Triton kernel is tested against, so it
favours clarity over speed (it materialises ``[B, Hq, Tq, Tk]`` scores).

Shapes: q ``[B, Hq, Tq, D]``, k and v ``[B, Hkv, Tk, D]`` (``Hq % Hkv == 0``; query head ``h``
reads key/value head ``h // (Hq // Hkv)``), layout bool ``[B or 1, Hq or 1, ceil(Tq / bs),
ceil(Tk / bs)]``. Output ``[B, Hq, Tq, D]`` in q's dtype.

Positions: the queries are the *last* ``Tq`` positions of the ``Tk``-long sequence, so query
``i`` sits at absolute position ``Tk - Tq + i`` (``Tq = Tk``: prefill; ``Tq = 1``: decoding one
token against its cache). Query block ``r`` holds queries ``r * bs .. r * bs + bs - 1`` (counted
from the first query), key block ``c`` holds keys ``c * bs .. c * bs + bs - 1``. Query ``i``
may attend key ``j`` iff ``layout[b, h, i // bs, j // bs]`` and, with ``causal=True``,
``j <= Tk - Tq + i``.

A query that may attend no key at all (its layout row is empty, or every key of its active
blocks lies in its future) outputs zeros — not NaN, and not a uniform average.
"""

from __future__ import annotations

import math

import torch

__all__ = ["block_sparse_attention_reference", "token_mask_from_layout"]


def token_mask_from_layout(layout: torch.Tensor, q_len: int, k_len: int, block_size: int,
                           causal: bool = True) -> torch.Tensor:
    """Expand a block layout ``[Bl, Hl, nq, nk]`` to the token mask ``[Bl, Hl, q_len, k_len]``."""
    mask = layout.bool().repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
    mask = mask[..., :q_len, :k_len]
    if causal:
        query_pos = torch.arange(q_len, device=layout.device) + (k_len - q_len)
        key_pos = torch.arange(k_len, device=layout.device)
        mask = mask & (key_pos[None, :] <= query_pos[:, None])
    return mask


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int = 64,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense masked attention in fp32 with the layout's token mask; see the module docstring."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    group = Hq // Hkv
    allowed = token_mask_from_layout(layout, Tq, Tk, block_size, causal)  # broadcasts over B, Hq
    qf = q.float()
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # [B, Hq, Tq, Tk]
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    # A row with no allowed key is all -inf and softmax gives NaN there: define it as zero weight.
    has_key = allowed.any(dim=-1, keepdim=True).expand_as(weights)
    weights = torch.where(has_key, weights, torch.zeros_like(weights))
    return (weights @ vf).to(q.dtype)
