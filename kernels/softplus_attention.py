"""Softplus attention with length scaling and re-weighting (LSSA / LSSAR): Triton forward and
backward kernels, and a differentiable public wrapper.

From "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models"
(Gao & Spratling, arXiv 2501.13428; chapter ``softplus-attn``). Softmax is read as two steps, a
positive map (``exp``) followed by an l1 normalisation; the paper keeps the normalisation,
replaces ``exp`` with Softplus, multiplies the logits by a length-dependent factor (derived from
keeping the attention entropy invariant as the context grows), and optionally sharpens the
normalised weights with a power (re-weighting).

The exact formula implemented here
----------------------------------
For batch ``b``, head ``h``, query ``i`` and key ``j`` (``b``, ``h`` dropped below)::

    s_ij   = scale * q_i . k_j                        scale = 1 / sqrt(D) unless given
    N_i    = i + 1 (causal) or T (non-causal)         keys row i may attend
    lam_i  = log(N_i) / log(log_base)                 log_base = D (the head dim) unless given
    w_ij   = softplus(lam_i * s_ij) = log(1 + exp(lam_i * s_ij))
    a_ij   = w_ij^p / sum_{j' <= i} w_ij'^p           p = 1: LSSA; p > 1: LSSAR re-weighting
    out_i  = sum_{j <= i} a_ij v_j

``p = 1`` is the l1-normalised, length-scaled Softplus attention (LSSA). ``p > 1`` raises every
weight to the power ``p`` and renormalises, which amplifies the large weights and shrinks the
small ones; since ``(w / |w|_1)^p / |(w / |w|_1)^p|_1 = w^p / |w^p|_1`` this needs one pass. This
is our reading of the paper's text; the log base of the length factor (here the head dim, so
that ``lam = 1`` when ``N = D``) and the form of the re-weighting (plain power, no threshold)
are the two places where a chapter should check the paper and set ``log_base`` / ``p``
accordingly. Weights are positive for every allowed key (Softplus > 0), so every causal row has
a non-zero normaliser and no running maximum is needed: the kernel keeps only a running sum.

Shapes: q, k, v ``[B, H, T, D]`` (one head layout; D a power of two 16..256 for the kernel),
output ``[B, H, T, D]`` in q's dtype. ``p >= 1``.

Example (CPU tensors run the PyTorch twin; CUDA tensors the Triton kernels)::

    import torch
    from tokenbook.kernels.softplus_attention import softplus_attention
    q, k, v = (torch.randn(2, 4, 100, 64, requires_grad=True) for _ in range(3))
    out = softplus_attention(q, k, v, p=2.0)     # [2, 4, 100, 64]
    out.sum().backward()

The kernels
-----------
Forward: one program per (query block, head, batch), streaming key blocks up to the diagonal; it
accumulates ``sum_j u_ij v_j`` and ``L_i = sum_j u_ij`` (``u = w^p``) in fp32 and stores ``L`` for
the backward. Backward (Triton, FlashAttention-2 style, recomputing the weights from ``L``):
with ``dA_ij = dO_i . v_j`` and ``Delta_i = dO_i . out_i``::

    dv_j  = sum_i a_ij dO_i
    du_ij = (dA_ij - Delta_i) / L_i
    ds_ij = du_ij * p * w_ij^(p-1) * sigmoid(lam_i s_ij) * lam_i
    dq_i  = scale * sum_j ds_ij k_j,   dk_j = scale * sum_i ds_ij q_i

one kernel per key block for dk, dv (looping over query blocks) and one per query block for dq.
``Delta`` is computed with one PyTorch reduction. Every visited tile is masked (no mask-free fast
path), which keeps the kernels short at some cost in speed.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .softplus_attention_reference import softplus_attention_reference

__all__ = ["softplus_attention"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2_E = 1.4426950408889634


@triton.jit
def _mm(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b. UPCAST: interpreted bf16 (triton 3.6 multiplies raw bits), so go through fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)), accurate for very negative x too (log1p via the z - 1 correction)."""
    e = tl.exp(-tl.abs(x))
    z = 1.0 + e
    exact = z == 1.0  # e below half an ulp of 1: log1p(e) = e
    log1p_e = tl.where(exact, e, tl.log(z) * (e / tl.where(exact, 1.0, z - 1.0)))
    return tl.maximum(x, 0.0) + log1p_e


@triton.jit
def _weights(s, lam, P: tl.constexpr):
    """x = lam * s, w = softplus(x), u = w^p (P is a float constexpr; 1.0 skips the power)."""
    x = s * lam[:, None]
    w = _softplus(x)
    if P == 1.0:
        u = w
    else:
        u = tl.exp2(P * tl.log2(tl.maximum(w, 1e-30)))  # floor: w underflows to 0 for x < -87
    return x, w, u


@triton.jit
def _row_lambda(offs_m, seq_len, inv_log_base, CAUSAL: tl.constexpr):
    if CAUSAL:
        n_keys = offs_m + 1
    else:
        n_keys = tl.zeros_like(offs_m) + seq_len
    return tl.log(tl.maximum(n_keys, 1).to(tl.float32)) * inv_log_base


@triton.jit
def _softplus_attention_fwd_kernel(
    Q, K, V, Out, L, scale, inv_log_base, seq_len,
    stride_b, stride_h, stride_t, stride_ob, stride_oh, stride_ot,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    base = batch * stride_b + head * stride_h
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q = tl.load(Q + base + offs_m[:, None].to(tl.int64) * stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lam = _row_lambda(offs_m, seq_len, inv_log_base, CAUSAL)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if CAUSAL:
        n_end = tl.minimum(seq_len, (m_block + 1) * BLOCK_M)
    else:
        n_end = seq_len
    for n_start in range(0, n_end, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < seq_len
        kv_off = base + offs_n[:, None].to(tl.int64) * stride_t + offs_d[None, :]
        k = tl.load(K + kv_off, mask=key_ok[:, None], other=0.0)
        v = tl.load(V + kv_off, mask=key_ok[:, None], other=0.0)
        s = _mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), UPCAST, PRECISION) * scale
        x, w, u = _weights(s, lam, P)
        keep = key_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        u = tl.where(keep, u, 0.0)
        l_i += tl.sum(u, 1)
        acc = _mm(u.to(v.dtype), v, acc, UPCAST, PRECISION)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(Out + batch * stride_ob + head * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(L + (batch * tl.num_programs(1) + head) * seq_len + offs_m, l_safe, mask=row_ok)


@triton.jit
def _score_grad(q, k, v, do, lam, l_i, delta, offs_m, offs_n, seq_len, scale,
                P: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For one (query tile, key tile): the normalised weights a and dL/ds (both masked)."""
    zeros = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    s = _mm(q, tl.trans(k), zeros, UPCAST, PRECISION) * scale
    x, w, u = _weights(s, lam, P)
    keep = (offs_n[None, :] < seq_len) & (offs_m[:, None] < seq_len)
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    a = tl.where(keep, u / l_i[:, None], 0.0)
    da = _mm(do, tl.trans(v), zeros, UPCAST, PRECISION)
    du = (da - delta[:, None]) / l_i[:, None]
    if P == 1.0:
        dw = du
    else:
        # p * w^(p-1) = p * u / w; w > 0 wherever it does not underflow, and u / w -> 0 there.
        dw = du * P * tl.where(w > 0.0, u / w, 0.0)
    ds = dw * tl.sigmoid(x) * lam[:, None]
    ds = tl.where(keep, ds, 0.0)
    return a, ds


@triton.jit
def _softplus_attention_bwd_dkdv_kernel(
    Q, K, V, DO, L, Delta, DK, DV, scale, inv_log_base, seq_len,
    stride_b, stride_h, stride_t, stride_gb, stride_gh, stride_gt,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    n_block = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    base = batch * stride_b + head * stride_h
    gbase = batch * stride_gb + head * stride_gh
    row_base = (batch * tl.num_programs(1) + head) * seq_len
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < seq_len
    kv_off = base + offs_n[:, None].to(tl.int64) * stride_t + offs_d[None, :]
    k = tl.load(K + kv_off, mask=key_ok[:, None], other=0.0)
    v = tl.load(V + kv_off, mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        m_lo = (n_block * BLOCK_N) // BLOCK_M * BLOCK_M
    else:
        m_lo = 0
    for m_start in range(m_lo, seq_len, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_len
        q_off = base + offs_m[:, None].to(tl.int64) * stride_t + offs_d[None, :]
        q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + gbase + offs_m[:, None].to(tl.int64) * stride_gt + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        l_i = tl.load(L + row_base + offs_m, mask=row_ok, other=1.0)
        delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
        lam = _row_lambda(offs_m, seq_len, inv_log_base, CAUSAL)
        a, ds = _score_grad(q, k, v, do, lam, l_i, delta, offs_m, offs_n, seq_len, scale,
                            P, CAUSAL, PRECISION, UPCAST, BLOCK_M, BLOCK_N)
        dv = _mm(tl.trans(a).to(do.dtype), do, dv, UPCAST, PRECISION)
        dk = _mm(tl.trans(ds).to(q.dtype), q, dk, UPCAST, PRECISION)
    out_off = base + offs_n[:, None].to(tl.int64) * stride_t + offs_d[None, :]
    tl.store(DK + out_off, (dk * scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _softplus_attention_bwd_dq_kernel(
    Q, K, V, DO, L, Delta, DQ, scale, inv_log_base, seq_len,
    stride_b, stride_h, stride_t, stride_gb, stride_gh, stride_gt,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    base = batch * stride_b + head * stride_h
    gbase = batch * stride_gb + head * stride_gh
    row_base = (batch * tl.num_programs(1) + head) * seq_len
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q_off = base + offs_m[:, None].to(tl.int64) * stride_t + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + gbase + offs_m[:, None].to(tl.int64) * stride_gt + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    l_i = tl.load(L + row_base + offs_m, mask=row_ok, other=1.0)
    delta = tl.load(Delta + row_base + offs_m, mask=row_ok, other=0.0)
    lam = _row_lambda(offs_m, seq_len, inv_log_base, CAUSAL)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        n_end = tl.minimum(seq_len, (m_block + 1) * BLOCK_M)
    else:
        n_end = seq_len
    for n_start in range(0, n_end, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < seq_len
        kv_off = base + offs_n[:, None].to(tl.int64) * stride_t + offs_d[None, :]
        k = tl.load(K + kv_off, mask=key_ok[:, None], other=0.0)
        v = tl.load(V + kv_off, mask=key_ok[:, None], other=0.0)
        a, ds = _score_grad(q, k, v, do, lam, l_i, delta, offs_m, offs_n, seq_len, scale,
                            P, CAUSAL, PRECISION, UPCAST, BLOCK_M, BLOCK_N)
        dq = _mm(ds.to(k.dtype), k, dq, UPCAST, PRECISION)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


_KERNEL_IS_INTERPRETED = type(_softplus_attention_fwd_kernel).__name__ == "InterpretedFunction"


def default_config(head_dim: int) -> dict:
    """Tile sizes and launch parameters (64x64 tiles, as for the flash-style kernels on the H200)."""
    if head_dim <= 128:
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=2)
    return dict(block_m=64, block_n=32, num_warps=8, num_stages=1)


def _launch_args(q, p, causal, scale, log_base, config):
    D = q.shape[-1]
    return dict(
        HEAD_DIM=D, BLOCK_M=config["block_m"], BLOCK_N=config["block_n"], P=float(p), CAUSAL=bool(causal),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=_KERNEL_IS_INTERPRETED and q.dtype == torch.bfloat16,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )


class _SoftplusAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, p, causal, scale, log_base, config):
        B, H, T, D = q.shape
        q, k, v = (t.contiguous() for t in (q, k, v))
        out = torch.empty_like(q)
        row_sums = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
        inv_log_base = 1.0 / math.log(log_base)
        grid = (triton.cdiv(T, config["block_m"]), H, B)
        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            _softplus_attention_fwd_kernel[grid](
                q, k, v, out, row_sums, float(scale), inv_log_base, T,
                q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
                **_launch_args(q, p, causal, scale, log_base, config))
        ctx.save_for_backward(q, k, v, out, row_sums)
        ctx.settings = (p, causal, scale, log_base, config)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, row_sums = ctx.saved_tensors
        p, causal, scale, log_base, config = ctx.settings
        B, H, T, D = q.shape
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1).contiguous()   # [B, H, T]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        args = (float(scale), 1.0 / math.log(log_base), T,
                q.stride(0), q.stride(1), q.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2))
        meta = _launch_args(q, p, causal, scale, log_base, config)
        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            _softplus_attention_bwd_dkdv_kernel[(triton.cdiv(T, config["block_n"]), H, B)](
                q, k, v, grad_out, row_sums, delta, dk, dv, *args, **meta)
            _softplus_attention_bwd_dq_kernel[(triton.cdiv(T, config["block_m"]), H, B)](
                q, k, v, grad_out, row_sums, delta, dq, *args, **meta)
        return dq, dk, dv, None, None, None, None, None


def softplus_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    p: float = 1.0,
    causal: bool = True,
    scale: float | None = None,
    log_base: float | None = None,
    backend: str = "auto",
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Length-scaled Softplus attention with power re-weighting (formula in the module docstring).

    Args:
        q, k, v: ``[B, H, T, D]``, float32, float16 or bfloat16, one dtype.
        p: re-weighting power, ``>= 1`` (1: LSSA, no re-weighting).
        causal: row ``i`` attends keys ``j <= i`` (and ``N_i = i + 1``).
        scale: logit scale, ``1 / sqrt(D)`` by default.
        log_base: base of the length factor's logarithm, ``D`` by default (must be > 1).
        backend: ``"auto"`` (Triton for CUDA tensors, the twin otherwise), ``"triton"`` (CPU
            tensors only under ``TRITON_INTERPRET=1``) or ``"reference"``.
        block_m, block_n, num_warps, num_stages: launch overrides for benchmarking.

    Returns:
        ``[B, H, T, D]`` in q's dtype; differentiable in q, k, v on both backends (the Triton
        backend's backward is a pair of Triton kernels).
    """
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor [B, H, T, D]")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one shape and dtype, got {tuple(q.shape)} {q.dtype}, "
                         f"{tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}")
    if not p >= 1.0:
        raise ValueError(f"p must be >= 1, got {p}")
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    log_base = float(D) if log_base is None else float(log_base)
    if not log_base > 1.0:
        raise ValueError(f"log_base must be > 1, got {log_base}")
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"
    if backend == "reference":
        return softplus_attention_reference(q, k, v, p=p, causal=causal, scale=scale, log_base=log_base)
    if not q.is_cuda and not _KERNEL_IS_INTERPRETED:
        raise RuntimeError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "tokenbook.kernels.softplus_attention (and triton) are imported")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"the Triton kernel takes a power-of-two head_dim in 16..256, got D={D}")
    config = default_config(D)
    for key, value in (("block_m", block_m), ("block_n", block_n), ("num_warps", num_warps),
                       ("num_stages", num_stages)):
        if value is not None:
            config[key] = value
    if q.numel() == 0:
        return torch.zeros_like(q)
    return _SoftplusAttention.apply(q, k, v, float(p), bool(causal), scale, log_base, config)
