"""Readable PyTorch twin of :mod:`tokenbook.kernels.varlen_attention`.

Variable-length packed attention: ``S`` sequences are concatenated along the token axis
(``T`` tokens in all) and ``cu_seqlens`` marks where each one starts and ends. Each sequence
attends only to itself (causally by default), exactly as if it had been run alone.

Shapes: q ``[T, Hq, D]``, k and v ``[T, Hkv, D]``, cu_seqlens ``[S + 1]`` (starts at 0, ends at
T), output ``[T, Hq, D]`` in q's dtype. Grouped-query attention: query head ``h`` reads key/value
head ``h // (Hq // Hkv)`` (the same grouping as ``repeat_interleave`` of the KV heads, i.e. as
Hugging Face's ``repeat_kv``).

This twin loops over the sequences and does the math explicitly in fp32; it is the
specification the Triton kernel is tested against, so it favours clarity over speed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["varlen_attention_reference"]


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of each packed sequence with itself; see the module docstring.

    ``max_seqlen`` is accepted for signature parity with the kernel and otherwise unused.
    """
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    bounds = cu_seqlens.tolist()
    out = torch.zeros_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # [L, H, D] -> [H, L, D], in fp32; expand KV heads so every query head has its own copy.
        qs = q[start:end].float().transpose(0, 1)
        ks = k[start:end].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[start:end].float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (qs @ ks.transpose(1, 2)) * scale  # [H, L, L]
        if causal:
            L = end - start
            future = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out[start:end] = (weights @ vs).transpose(0, 1).to(q.dtype)
    return out
