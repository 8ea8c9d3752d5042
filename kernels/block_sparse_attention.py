"""Block-sparse (causal) attention driven by a per-head block layout: Triton kernel and wrapper.

What it computes
----------------
The ``Tq x Tk`` score matrix is cut into ``block_size x block_size`` blocks (``bs`` below). A
boolean ``layout[b, h, r, c]`` says whether query block ``r`` of batch element ``b`` and query
head ``h`` attends key block ``c``. Query ``i`` may attend key ``j`` iff
``layout[b, h, i // bs, j // bs]`` and, with ``causal=True`` (the default), ``j <= Tk - Tq + i``;
over those keys it computes ordinary softmax attention::

    out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, g(h), j]) * v[b, g(h), j]

- Positions: the queries are the **last** ``Tq`` positions of the ``Tk``-long sequence, so
  query ``i`` sits at absolute position ``Tk - Tq + i``. ``Tq = Tk`` is prefill, ``Tq < Tk`` a
  chunk of prefill against a cache, ``Tq = 1`` decoding. Query blocks are counted from the first
  query (row ``r`` holds queries ``r * bs ..``), key blocks from position 0; the layout builders
  in :mod:`tokenbook.kernels.sparse_layouts` align row ``r`` with key block
  ``r + n_k_blocks - n_q_blocks``, which is exact whenever ``(Tk - Tq) % bs == 0`` or ``Tq = 1``.
- Empty rows: a query that may attend no key at all — its layout row is empty, or every key of
  its active blocks lies in its future — outputs **zeros** (softmax over an empty set would be
  0/0). Chapters that drop blocks rely on this being defined, finite and testable.
- GQA: query head ``h`` reads key/value head ``g(h) = h // (Hq // Hkv)``.
- With ``causal=True`` the layout blocks wholly in a row's future are dropped when the index is
  built, so a full layout costs exactly dense causal attention, and ``Tq > Tk`` is refused.

Shape glossary: ``B`` batch, ``Hq`` query heads, ``Hkv`` key/value heads, ``Tq``/``Tk`` query
and key lengths, ``D`` head dim (a power of two 16..256 for the kernel), ``nq = ceil(Tq / bs)``,
``nk = ceil(Tk / bs)``. The layout is ``[B or 1, Hq or 1, nq, nk]`` (size-1 axes broadcast).

Example (runs on CPU through the PyTorch twin; on CUDA tensors the Triton kernel runs)::

    import torch
    from tokenbook.kernels.block_sparse_attention import block_sparse_attention
    from tokenbook.kernels.sparse_layouts import lambda_layout
    q = torch.randn(1, 4, 300, 64)
    k, v = torch.randn(1, 2, 300, 64), torch.randn(1, 2, 300, 64)
    layout = lambda_layout(5, 5, sink_blocks=1, window_blocks=2)   # [1, 1, 5, 5]
    out = block_sparse_attention(q, k, v, layout, block_size=64)   # [1, 4, 300, 64]

The kernel
----------
The wrapper compresses the layout once, on the device and without a host sync, into a
CSR-like index per layout row: ``counts[b, h, r]`` (active key blocks after dropping causally
dead ones), ``n_full[b, h, r]`` (how many of them need no mask: wholly in the past of every query
of the row and inside ``Tk``) and ``cols[b, h, r, :]`` (the active key-block numbers, ascending,
padded). Because the columns are sorted and "needs no mask" is monotone in the column, the first
``n_full`` entries are exactly the unmasked ones.

One program per (query tile of ``BLOCK_M`` rows, query head, batch element). ``BLOCK_M``
divides ``bs`` so a tile lies in one layout row. The program reads that row's count and visits
only the listed key blocks — never scanning the row — first the ``n_full`` mask-free blocks,
then the masked rest (diagonal and ragged-end blocks), each in ``bs / BLOCK_N`` key tiles, with
the online softmax of flash attention in base 2 and an fp32 accumulator. A row that saw no key
has a zero running sum and is written as zeros.

Decode (``Tq = 1``, or any short ``Tq``): the same kernel with a 16-row query tile (the smallest
``tl.dot`` takes), chosen automatically when ``Tq <= 16``; one program per (head, batch) then
streams that head's active key blocks. There is no split-K over the cache: at ``B * Hq`` programs
(32 for one sequence with 32 heads) a long cache is read by few SMs, so decoding a very long
cache is not at the memory roofline; it is correct and exercised by the tests.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .block_sparse_attention_reference import block_sparse_attention_reference

__all__ = ["block_sparse_attention", "build_block_index", "default_config"]

_LOG2_E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _attend_listed_blocks(
    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, cols_row, offs_q_abs, k_len, qk_scale,
    idx_lo, idx_hi,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERPRETER_BF16: tl.constexpr,
):
    """Fold the key blocks listed at cols_row[idx_lo:idx_hi] into the online-softmax state."""
    offs_d = tl.arange(0, HEAD_DIM)
    for idx in range(idx_lo, idx_hi):
        block_start = tl.load(cols_row + idx) * BLOCK_SIZE
        for sub in tl.static_range(0, BLOCK_SIZE, BLOCK_N):
            offs_n = block_start + sub + tl.arange(0, BLOCK_N)
            k_ptrs = k_base + offs_n[:, None].to(tl.int64) * stride_kt + offs_d[None, :]
            v_ptrs = v_base + offs_n[:, None].to(tl.int64) * stride_vt + offs_d[None, :]
            if MASKED:
                key_in_seq = offs_n < k_len
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
                    keep = keep & (offs_n[None, :] <= offs_q_abs[:, None])
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
                acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _block_sparse_attention_fwd_kernel(
    Q, K, V, Out, Counts, NFull, Cols, qk_scale, q_len, k_len,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    stride_ib, stride_ih, stride_ir, stride_cb, stride_ch, stride_cr,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERPRETER_BF16: tl.constexpr,
):
    # Last query tile first: causal rows near the end tend to list the most key blocks.
    m_tile = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    kv_head = head // GROUP
    m_lo = m_tile * BLOCK_M
    row = m_lo // BLOCK_SIZE

    offs_m = m_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < q_len
    offs_q_abs = offs_m + (k_len - q_len)

    q_ptrs = Q + batch * stride_qb + head * stride_qh + offs_m[:, None].to(tl.int64) * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh

    # Broadcast layouts (size-1 batch or head axis) arrive with a zero stride.
    index_off = batch * stride_ib + head * stride_ih + row * stride_ir
    count = tl.load(Counts + index_off)
    n_full = tl.load(NFull + index_off)
    cols_row = Cols + batch * stride_cb + head * stride_ch + row * stride_cr

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _attend_listed_blocks(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, cols_row, offs_q_abs, k_len, qk_scale,
        0, n_full, HEAD_DIM, BLOCK_SIZE, BLOCK_N, False, CAUSAL, DOT_PRECISION, INTERPRETER_BF16)
    acc, l_i, m_i = _attend_listed_blocks(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, cols_row, offs_q_abs, k_len, qk_scale,
        n_full, count, HEAD_DIM, BLOCK_SIZE, BLOCK_N, True, CAUSAL, DOT_PRECISION, INTERPRETER_BF16)

    # Rows that saw no key (empty layout row, or only future keys) have l_i == 0: write zeros.
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    out = tl.where(has_key[:, None], out, 0.0)
    o_ptrs = Out + batch * stride_ob + head * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_valid[:, None])


# Under TRITON_INTERPRET=1 (triton 3.6) tl.dot multiplies bf16 tiles as their raw uint16 bits
# (see varlen_attention.py), so the interpreted kernel upcasts bf16 dot operands to fp32.
_KERNEL_IS_INTERPRETED = type(_block_sparse_attention_fwd_kernel).__name__ == "InterpretedFunction"


def default_config(head_dim: int, block_size: int, q_len: int) -> dict:
    """Launch parameters used when the caller passes none.

    Prefill: 64-row query tiles and 64-key tiles (capped by ``block_size``), 4 warps, 3 stages,
    the best plain flash-attention configuration on the reference H200 at D=128 (GPU.md).
    Decode (``q_len <= 16``): 16-row query tiles, so one query does not pay for 64 rows.
    """
    block_m = 16 if q_len <= 16 else min(64, block_size)
    block_n = min(64 if head_dim <= 128 else 32, block_size)
    if head_dim <= 128:
        return dict(block_m=block_m, block_n=block_n, num_warps=4, num_stages=3)
    return dict(block_m=block_m, block_n=block_n, num_warps=8, num_stages=2)


def build_block_index(layout: torch.Tensor, q_len: int, k_len: int, block_size: int,
                      causal: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress a block layout into the kernel's per-row index (no host sync).

    Args:
        layout: bool ``[Bl, Hl, nq, nk]``.
    Returns:
        ``counts`` int32 ``[Bl, Hl, nq]``: active key blocks per row (causally dead ones dropped);
        ``n_full`` int32 ``[Bl, Hl, nq]``: how many of them are visible, whole, to every query of
        the row and lie inside ``k_len`` (they need no mask);
        ``cols`` int32 ``[Bl, Hl, nq, nk]``: the active key-block numbers, ascending, in the first
        ``counts`` entries of each row (the rest is padding the kernel never reads).
    """
    nq, nk = layout.shape[-2], layout.shape[-1]
    device = layout.device
    offset = k_len - q_len
    rows = torch.arange(nq, device=device)
    cols_idx = torch.arange(nk, device=device)
    first_query_pos = offset + rows * block_size                                 # [nq]
    last_query_pos = offset + torch.clamp((rows + 1) * block_size, max=q_len) - 1  # [nq]
    key_block_first = cols_idx * block_size                                      # [nk]
    key_block_last = (cols_idx + 1) * block_size - 1
    in_bounds = (cols_idx + 1) * block_size <= k_len                             # [nk]
    active = layout.bool()
    if causal:
        alive = key_block_first[None, :] <= last_query_pos[:, None]               # [nq, nk]
        active = active & alive
        clean = in_bounds[None, :] & (key_block_last[None, :] <= first_query_pos[:, None])
    else:
        clean = in_bounds[None, :].expand(nq, nk)
    counts = active.sum(-1, dtype=torch.int32)
    n_full = (active & clean).sum(-1, dtype=torch.int32)
    # A stable sort of "inactive" (0 before 1) lists the active columns first, in ascending order.
    cols = torch.sort((~active).to(torch.uint8), dim=-1, stable=True).indices.to(torch.int32)
    return counts.contiguous(), n_full.contiguous(), cols.contiguous()


def _check_inputs(q, k, v, layout, block_size, causal):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-d tensor [batch, heads, tokens, head_dim], got {got}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k/v must be [B={B}, Hkv, Tk, D={D}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of key/value heads Hkv={Hkv}")
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq positions), got {Tq} > {Tk}")
    if not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 4:
        got = (f"{tuple(layout.shape)} {layout.dtype}" if isinstance(layout, torch.Tensor)
               else type(layout).__name__)
        raise ValueError(f"layout must be a 4-d bool tensor [B or 1, Hq or 1, nq, nk], got {got}")
    nq, nk = -(-Tq // block_size), -(-Tk // block_size)
    Bl, Hl = layout.shape[:2]
    if Bl not in (1, B) or Hl not in (1, Hq) or tuple(layout.shape[2:]) != (nq, nk):
        raise ValueError(f"layout must be [1 or {B}, 1 or {Hq}, {nq}, {nk}] for Tq={Tq}, Tk={Tk}, "
                         f"block_size={block_size}, got {tuple(layout.shape)}")
    if layout.device != q.device or len({t.device for t in (q, k, v)}) != 1:
        raise ValueError("q, k, v and layout must be on one device")


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: torch.Tensor,
    *,
    block_size: int = 64,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
    block_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Attention restricted to the key blocks a layout lists (see the module docstring).

    Args:
        q: ``[B, Hq, Tq, D]``; k, v: ``[B, Hkv, Tk, D]``; float32, float16 or bfloat16, one dtype.
        layout: bool ``[B or 1, Hq or 1, ceil(Tq / block_size), ceil(Tk / block_size)]``.
        block_size: the layout's block edge in tokens (a power of two >= 16).
        causal: query ``i`` (absolute position ``Tk - Tq + i``) sees keys ``j <= Tk - Tq + i``.
        scale: score scale, ``1 / sqrt(D)`` by default.
        backend: ``"auto"`` (Triton for CUDA tensors, the PyTorch twin otherwise),
            ``"triton"`` (the kernel; CPU tensors only under ``TRITON_INTERPRET=1``) or
            ``"reference"`` (the twin).
        block_index: optional ``build_block_index(layout, Tq, Tk, block_size, causal)`` output,
            to reuse one compressed layout across layers or calls (Triton path; it must have
            been built from this layout with the same arguments — it is not re-checked).
        block_m, block_n, num_warps, num_stages: launch overrides for benchmarking; both tile
            sizes must be powers of two in 16..block_size (they then divide it).

    Returns:
        ``[B, Hq, Tq, D]`` in q's dtype, contiguous; zeros for queries that may attend no key.
    """
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    _check_inputs(q, k, v, layout, block_size, causal)
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"
    if backend == "reference":
        return block_sparse_attention_reference(q, k, v, layout, block_size=block_size, causal=causal, scale=scale)

    if not q.is_cuda and not _KERNEL_IS_INTERPRETED:
        raise RuntimeError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "tokenbook.kernels.block_sparse_attention (and triton) are imported")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"the Triton kernel takes a power-of-two head_dim in 16..256, got D={D}")
    config = default_config(D, block_size, Tq)
    for key, value in (("block_m", block_m), ("block_n", block_n),
                       ("num_warps", num_warps), ("num_stages", num_stages)):
        if value is not None:
            config[key] = value
    for key in ("block_m", "block_n"):
        size = config[key]
        if size < 16 or size & (size - 1) or size > block_size:
            raise ValueError(f"{key} must be a power of two in 16..block_size={block_size}, got {size}")

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    # Uninitialised on purpose: the kernel writes every element (the tests poison torch.empty).
    out = torch.empty((B, Hq, Tq, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if block_index is None:
        block_index = build_block_index(layout, Tq, Tk, block_size, causal)
    counts, n_full, cols = block_index

    def bstride(t, axis):  # zero stride on a broadcast (size-1) layout axis
        return 0 if t.shape[axis] == 1 else t.stride(axis)

    if B > 65535 or Hq > 65535:
        raise ValueError(f"at most 65535 batch elements and heads (CUDA grid limits), got B={B}, Hq={Hq}")
    grid = (triton.cdiv(Tq, config["block_m"]), Hq, B)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _block_sparse_attention_fwd_kernel[grid](
            q, k, v, out, counts, n_full, cols, float(scale) * _LOG2_E, Tq, Tk,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            bstride(counts, 0), bstride(counts, 1), counts.stride(2),
            bstride(cols, 0), bstride(cols, 1), cols.stride(2),
            GROUP=Hq // k.shape[1], HEAD_DIM=D, BLOCK_SIZE=block_size,
            BLOCK_M=config["block_m"], BLOCK_N=config["block_n"], CAUSAL=bool(causal),
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            INTERPRETER_BF16=_KERNEL_IS_INTERPRETED and q.dtype == torch.bfloat16,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
    return out
