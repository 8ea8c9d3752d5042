"""Readable PyTorch twin of :mod:`tokenbook.kernels.softplus_attention`.

Softplus attention with length scaling and power re-weighting (LSSA / LSSAR, arXiv 2501.13428),
as defined in the kernel module's docstring::

    s_ij   = scale * q_i . k_j                       (scale = 1 / sqrt(D) by default)
    N_i    = number of keys row i may attend         (i + 1 causal, T otherwise)
    lam_i  = log(N_i) / log(log_base)                (log_base = D by default)
    w_ij   = softplus(lam_i * s_ij)
    a_ij   = w_ij ** p / sum_{j' allowed} w_ij' ** p   (p = 1: LSSA; p > 1: LSSAR)
    out_i  = sum_j a_ij v_j

Shapes: q, k, v ``[B, H, T, D]``; output ``[B, H, T, D]`` in q's dtype. The twin works in fp32
and materialises the ``[B, H, T, T]`` weights, so it is differentiable with plain autograd; it is
the specification the Triton forward and backward kernels are tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["softplus_attention_reference", "length_factor"]


def length_factor(n_keys: torch.Tensor, log_base: float) -> torch.Tensor:
    """``log(N) / log(log_base)``: the per-row length scale (0 for a row that sees one key)."""
    return torch.log(n_keys.float()) / math.log(log_base)


def softplus_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    p: float = 1.0,
    causal: bool = True,
    scale: float | None = None,
    log_base: float | None = None,
) -> torch.Tensor:
    """Softplus attention in fp32; see the module docstring. Differentiable in q, k, v."""
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    log_base = float(D) if log_base is None else log_base
    positions = torch.arange(T, device=q.device)
    if causal:
        allowed = positions[None, :] <= positions[:, None]               # [T, T]
        n_keys = positions + 1
    else:
        allowed = torch.ones(T, T, dtype=torch.bool, device=q.device)
        n_keys = torch.full((T,), T, device=q.device)
    lam = length_factor(n_keys, log_base)[:, None]                        # [T, 1]
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale           # [B, H, T, T]
    weights = F.softplus(lam * scores) ** p
    weights = weights.masked_fill(~allowed, 0.0)
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights @ v.float()).to(q.dtype)
