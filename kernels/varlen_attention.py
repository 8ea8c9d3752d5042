"""Variable-length packed causal attention: a Triton forward kernel and its public wrapper.

What it computes
----------------
``S`` sequences of different lengths ``L_0 .. L_{S-1}`` are packed back to back along the token
axis, without padding; ``cu_seqlens`` holds the cumulative lengths ``[0, L_0, L_0 + L_1, ..., T]``
(the convention of flash-attn's varlen API). For every sequence ``s``, query head ``h`` and
query position ``i`` inside that sequence::

    out[i, h] = sum_j softmax_j(scale * q[i, h] . k[j, g(h)]) * v[j, g(h)]

where ``j`` runs over the positions of the same sequence only, and with ``causal=True`` (the
default) only over ``j <= i``. Tokens never attend across a sequence boundary, so the result
equals running each sequence alone, without computing anything on padding.

Shape glossary
--------------
- ``T``: total packed tokens of all sequences (``cu_seqlens[-1]``)
- ``S``: number of sequences (``len(cu_seqlens) - 1``; empty sequences are allowed)
- ``Hq``: query heads; ``Hkv``: key/value heads, ``Hq % Hkv == 0``
- ``D``: head dimension (the Triton kernel takes a power of two, 16..256)

Grouped-query attention maps query head ``h`` to KV head ``g(h) = h // (Hq // Hkv)``: consecutive
query heads share a KV head, the same grouping as ``repeat_interleave`` (Hugging Face's
``repeat_kv``). SmolLM2-135M has Hq=9, Hkv=3, D=64.

Example (runs on CPU through the PyTorch twin; on CUDA tensors the Triton kernel runs)::

    import torch
    from tokenbook.kernels.varlen_attention import varlen_attention
    lengths = [5, 1, 12]
    cu_seqlens = torch.tensor([0, 5, 6, 18], dtype=torch.int32)
    q = torch.randn(18, 9, 64)
    k, v = torch.randn(18, 3, 64), torch.randn(18, 3, 64)
    out = varlen_attention(q, k, v, cu_seqlens)      # [18, 9, 64]

The kernel
----------
One program per (query block of ``BLOCK_M`` rows, query head, sequence). It loads its query
block once, then streams the key/value blocks of the same sequence, keeping a running max and
sum (online softmax, in base 2: ``scale * log2(e)`` is folded into the scores so ``exp2`` can
be used) and an fp32 accumulator. The loop bound over key blocks is computed in the kernel from
the sequence length: with ``causal=True`` it stops at the end of the query block. Key blocks that
lie wholly before the query block need no mask and take a mask-free path; only the blocks on the
diagonal and at the end of the sequence are masked. Query blocks past a sequence's end exit at
once (the grid is sized by ``max_seqlen``), and the grid's query-block axis is walked from the
last block to the first so the longest causal rows start first.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .varlen_attention_reference import varlen_attention_reference

__all__ = ["varlen_attention", "default_config"]

_LOG2_E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _attend_key_blocks(
    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, seqlen, qk_scale,
    n_lo, n_hi,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERPRETER_BF16: tl.constexpr,
):
    """Fold key/value blocks [n_lo, n_hi) of one sequence into the online-softmax state."""
    offs_d = tl.arange(0, HEAD_DIM)
    for n_start in range(n_lo, n_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            key_in_seq = offs_n < seqlen
            k = tl.load(k_ptrs, mask=key_in_seq[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        if INTERPRETER_BF16:
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        scores = scores * qk_scale
        if MASKED:
            keep = key_in_seq[None, :]
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= offs_n[None, :])
            scores = tl.where(keep, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        rescale = tl.math.exp2(m_i - m_new)
        l_i = l_i * rescale + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=key_in_seq[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * rescale[:, None]
        if INTERPRETER_BF16:
            # p is rounded to bf16 first, exactly as on the GPU path.
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _varlen_attention_fwd_kernel(
    Q, K, V, Out, CuSeqlens, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, INTERPRETER_BF16: tl.constexpr,
):
    # Last query block first: with a causal mask it has the most key blocks to visit. Heads are
    # the middle grid axis so the query heads that share a KV head run close together in time and
    # find that KV head's tiles in L2.
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)

    # int64 offsets: T * H * D can pass 2**31 at long contexts.
    start = tl.load(CuSeqlens + seq).to(tl.int64)
    seqlen = (tl.load(CuSeqlens + seq + 1).to(tl.int64) - start).to(tl.int32)
    m_lo = m_block * BLOCK_M
    if m_lo >= seqlen:
        return

    kv_head = head // GROUP
    offs_m = m_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_in_seq = offs_m < seqlen
    q_ptrs = Q + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_in_seq[:, None], other=0.0)
    k_base = K + start * stride_kt + kv_head * stride_kh
    v_base = V + start * stride_vt + kv_head * stride_vh

    # A finite floor rather than -inf keeps exp2(m_i - m_new) well defined even for a row whose
    # first visited block were fully masked (it cannot be here, but the guard is free).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        # Keys before the query block, in whole key blocks: visible to every row, inside the
        # sequence (m_lo < seqlen), so no mask. Then the diagonal blocks, masked.
        n_unmasked_end = (m_lo // BLOCK_N) * BLOCK_N
        n_end = tl.minimum(seqlen, m_lo + BLOCK_M)
    else:
        n_unmasked_end = (seqlen // BLOCK_N) * BLOCK_N
        n_end = seqlen
    acc, l_i, m_i = _attend_key_blocks(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, seqlen, qk_scale,
        0, n_unmasked_end, HEAD_DIM, BLOCK_N, False, CAUSAL, DOT_PRECISION, INTERPRETER_BF16)
    acc, l_i, m_i = _attend_key_blocks(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, seqlen, qk_scale,
        n_unmasked_end, n_end, HEAD_DIM, BLOCK_N, True, CAUSAL, DOT_PRECISION, INTERPRETER_BF16)

    out = acc / l_i[:, None]
    o_ptrs = Out + (start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_in_seq[:, None])


# Under TRITON_INTERPRET=1 (triton 3.6) tl.dot multiplies bf16 tiles as their raw uint16 bits,
# so the interpreted kernel upcasts bf16 dot operands to fp32 (exact; the GPU's bf16 tensor cores
# also form exact products and accumulate in fp32). The compiled kernel never takes that branch.
_KERNEL_IS_INTERPRETED = type(_varlen_attention_fwd_kernel).__name__ == "InterpretedFunction"


def default_config(head_dim: int) -> dict:
    """Launch parameters used when the caller passes none (chosen per head dimension).

    64x64 tiles with 4 warps and 3 stages were the best plain causal flash-attention
    configuration on the reference H200 for D=128 (GPU.md); D=256 needs smaller key tiles to
    fit its shared memory.
    """
    if head_dim <= 128:
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=3)
    return dict(block_m=64, block_n=32, num_warps=8, num_stages=2)


def _check_inputs(q, k, v, cu_seqlens, max_seqlen, out):
    """Validate shapes, dtypes and devices; return max_seqlen (computed if None).

    The values of cu_seqlens are checked whenever that costs no extra device sync: always on
    CPU, and on CUDA when max_seqlen is None (it has to be read to find the maximum anyway).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 3-d tensor [tokens, heads, head_dim], got {got}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    T, Hq, D = q.shape
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(
            f"k/v must be [T={T}, Hkv, D={D}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of key/value heads Hkv={Hkv}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        got = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"cu_seqlens must be a 1-d tensor [S + 1], got {got}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
    devices = {t.device for t in (q, k, v, cu_seqlens)}
    if len(devices) != 1:
        raise ValueError(f"q, k, v, cu_seqlens must be on one device, got {sorted(map(str, devices))}")
    if out is not None:
        if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}), got "
                f"({tuple(out.shape)}, {out.dtype}, {out.device})")
        if out.stride(-1) != 1:
            raise ValueError("out must have a contiguous last dimension")

    if q.device.type == "cpu" or max_seqlen is None:
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if any(n < 0 for n in lengths):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {bounds}")
        if bounds[-1] != T:
            raise ValueError(f"cu_seqlens[-1]={bounds[-1]} must equal the number of tokens T={T}")
        longest = max(lengths, default=0)
        if max_seqlen is None:
            max_seqlen = longest
        elif max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence ({longest})")
    return int(max_seqlen)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Attention of each packed sequence with itself (see the module docstring).

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]``; float32, float16 or bfloat16, one dtype.
        cu_seqlens: int32 ``[S + 1]``, cumulative lengths from 0 to T.
        max_seqlen: the longest sequence; computed (one device sync) when None. On CUDA pass
            it to avoid the sync; it must not be shorter than the longest sequence.
        causal: each token sees only itself and earlier tokens of its sequence.
        scale: score scale, ``1 / sqrt(D)`` by default.
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch twin otherwise),
            ``"triton"`` (the kernel; CPU tensors only under ``TRITON_INTERPRET=1``) or
            ``"reference"`` (the twin).
        out: optional ``[T, Hq, D]`` buffer of q's dtype for the result (Triton path).
        block_m, block_n, num_warps, num_stages: launch overrides for benchmarking; the
            defaults come from :func:`default_config`.

    Returns:
        ``[T, Hq, D]`` in q's dtype (``out`` when given). Scores, softmax and the weighted sum
        are accumulated in fp32; fp32 inputs use full-precision (not TF32) dot products.
    """
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    max_seqlen = _check_inputs(q, k, v, cu_seqlens, max_seqlen, out)
    T, Hq, D = q.shape
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"

    if backend == "reference":
        result = varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, causal=causal, scale=scale)
        if out is None:
            return result
        out.copy_(result)
        return out

    if not q.is_cuda and not _KERNEL_IS_INTERPRETED:
        raise RuntimeError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "tokenbook.kernels.varlen_attention (and triton) are imported")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"the Triton kernel takes a power-of-two head_dim in 16..256, got D={D}")

    config = default_config(D)
    for key, value in (("block_m", block_m), ("block_n", block_n),
                       ("num_warps", num_warps), ("num_stages", num_stages)):
        if value is not None:
            config[key] = value
    for key in ("block_m", "block_n"):
        size = config[key]
        if size < 16 or size & (size - 1):
            raise ValueError(f"{key} must be a power of two >= 16, got {size}")

    # The kernel needs unit stride along D; token and head strides may be anything.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if out is None:
        # Uninitialised on purpose: the kernel writes every element (the tests poison
        # torch.empty_like with NaN to prove it).
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if T == 0 or max_seqlen == 0:
        return out
    S = cu_seqlens.numel() - 1
    if S > 65535:
        raise ValueError(f"at most 65535 sequences per call (a CUDA grid-axis limit), got S={S}")
    grid = (triton.cdiv(max_seqlen, config["block_m"]), Hq, S)
    # Triton launches on the current CUDA device; make that q's device.
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _varlen_attention_fwd_kernel[grid](
            q, k, v, out, cu_seqlens, float(scale) * _LOG2_E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            GROUP=Hq // k.shape[1], HEAD_DIM=D, BLOCK_M=config["block_m"], BLOCK_N=config["block_n"],
            CAUSAL=bool(causal), DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            INTERPRETER_BF16=_KERNEL_IS_INTERPRETED and q.dtype == torch.bfloat16,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
    return out
