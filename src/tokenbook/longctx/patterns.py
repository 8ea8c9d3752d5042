"""Attention patterns for any Hugging Face Llama-family model: Λ (sinks + window, distance cap),
layout-driven block-sparse prefill, and the per-head pattern search helpers.

Shared by the long-context chapters (`lm-infinite`, `minference`, and later HiP / Squeezed
Attention). The model stays untouched: `apply(model, pattern)` switches its attention
implementation to `tokenbook_pattern` (registered in `tokenbook.attention`) and hangs a *pattern*
on every attention module; a pattern is a callable

    pattern(q, k, v, *, scale, layer) -> out [B, Hq, Tq, D]

with q ``[B, Hq, Tq, D]`` and k, v ``[B, Hkv, Tk, D]`` as HF hands them over: RoPE already
applied, the queries the *last* Tq of Tk positions (prefill Tq = Tk; a chunk or a decoded token
against a KV cache Tq < Tk), positions 0..Tk-1 (one sequence, no padding). `layer` is the
module's layer index, so a pattern can differ per layer and per head (MInference).

**Distance cap under pre-applied RoPE.** RoPE rotates q at position i and k at j so that
q_i·k_j depends on i − j only. LM-Infinite wants the *sink* keys (j < n_sink) seen at a distance
of at most `cap`: we re-rotate the query, q′_i = R(min(i, cap) − i)·q_i, which equals the query
rotated at position min(i, cap), so q′_i·k_j = q·R(min(i, cap) − j)·k — a distance ≤ cap. Window
keys keep the plain q_i. One softmax runs over both branches. The rotation uses the model's own
`inv_freq` (found on its rotary module), so any RoPE Llama-family model works; RoPE variants with
position-dependent scaling (YaRN's attention factor, dynamic NTK) are not handled.

Shapes: B batch, Hq / Hkv query / key-value heads (GQA: head h reads h // (Hq / Hkv)), Tq / Tk
query / key lengths, D head dim, S sink tokens, W window, bs block size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

# ---- RoPE helpers --------------------------------------------------------------------------


def rope_inv_freq(model) -> torch.Tensor:
    """The model's RoPE inverse frequencies ``[D/2]`` (from its rotary-embedding module)."""
    for m in model.modules():
        f = getattr(m, "inv_freq", None)
        if isinstance(f, torch.Tensor):
            return f.detach().float()
    raise ValueError("no rotary embedding (a module with `inv_freq`) found in this model")


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate RoPE'd vectors ``x [..., T, D]`` by ``delta [T]`` more positions (HF's half-split layout).

    ``rotate(rotate(x, d), -d) == x``; a vector rotated at position p becomes one rotated at p + delta.
    """
    ang = delta.to(torch.float32)[:, None] * inv_freq.to(x.device)[None, :]   # [T, D/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], -1)
    return (xf * cos + rot * sin).to(x.dtype)


# ---- Λ-shaped attention with a distance cap ---------------------------------------------------


def lambda_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sinks: int, window: int,
                     cap: int | None, inv_freq: torch.Tensor | None = None, scale: float | None = None,
                     chunk: int = 512) -> torch.Tensor:
    """Λ attention: query i sees keys ``i − W < j ≤ i`` (window) and ``j < S`` (sinks), and the sinks
    outside the window at a RoPE distance of at most ``cap`` (``None``: true distance).

    Cost O(Tq · (S + W + chunk)): queries are processed in chunks of ``chunk`` rows, each against
    only the keys its window can reach plus the sinks; nothing of size Tq × Tk is built.
    ``window >= Tk`` and ``cap=None`` is exactly causal attention.
    """
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if window < 1 or sinks < 0:
        raise ValueError(f"need window >= 1 and sinks >= 0, got {window}, {sinks}")
    if cap is not None and inv_freq is None:
        raise ValueError("a distance cap needs the model's RoPE inv_freq")
    off = Tk - Tq
    out = torch.empty_like(q)
    for s in range(0, Tq, chunk):
        e = min(Tq, s + chunk)
        pos = torch.arange(off + s, off + e, device=q.device)                 # absolute query positions
        k_lo = max(0, off + s - window + 1)                                   # first key any query here sees
        n_s = min(sinks, max(0, off + e - window))        # sinks outside the window of some query here
        kw, vw = k[:, :, k_lo:off + e], v[:, :, k_lo:off + e]
        kpos = torch.arange(k_lo, off + e, device=q.device)
        dist = pos[:, None] - kpos[None, :]
        allow = (dist >= 0) & (dist < window)                                 # [C, Kw] the band
        qc = q[:, :, s:e]
        if n_s > 0:
            sink_ok = pos[:, None] - window >= torch.arange(n_s, device=q.device)[None, :]
            allow = torch.cat([sink_ok, allow], 1)
            if cap is not None:
                qs = rotate(qc, torch.clamp(pos, max=cap) - pos, inv_freq)   # q at position min(i, cap)
                out[:, :, s:e] = _two_branch(qc, qs, kw, vw, k[:, :, :n_s], v[:, :, :n_s], allow, G, scale)
                continue
            kw, vw = torch.cat([k[:, :, :n_s], kw], 2), torch.cat([v[:, :, :n_s], vw], 2)
        kw, vw = kw.repeat_interleave(G, 1), vw.repeat_interleave(G, 1)
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(qc, kw, vw, attn_mask=allow, scale=scale)
    return out


USE_CPU_LSE = True   # tests switch it off to check the one-call path that CUDA takes


def _two_branch(q, qs, kw, vw, ks, vs, allow, G, scale):
    """One softmax over window keys (scored with q) and sink keys (scored with the re-rotated qs).

    allow ``[C, S + Kw]`` (sinks first). On CPU the window branch runs in SDPA's flash kernel, which
    also returns its log-sum-exp, and the few sink scores are merged in; elsewhere both branches go
    through one SDPA call on concatenated head dims: ``[q | qs]·[k_win | 0]`` and ``[q | qs]·[0 | k_sink]``.
    """
    n_s = ks.shape[2]
    kw, vw, ks, vs = (t.repeat_interleave(G, 1) for t in (kw, vw, ks, vs))
    if USE_CPU_LSE and q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        bias = torch.zeros(allow.shape[0], allow.shape[1] - n_s, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~allow[:, n_s:], float("-inf"))
        o_w, lse_w = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, kw, vw, 0.0, False, attn_mask=bias, scale=scale)
        s_s = (qs.float() @ ks.float().transpose(-1, -2) * scale).masked_fill(~allow[:, :n_s], float("-inf"))
        m = torch.maximum(lse_w.float(), s_s.amax(-1))                   # [B, H, C]
        w_w = torch.exp(lse_w.float() - m)
        p_s = torch.exp(s_s - m[..., None])
        num = o_w.float() * w_w[..., None] + p_s @ vs.float()
        return (num / (w_w + p_s.sum(-1))[..., None]).to(q.dtype)
    qq = torch.cat([q, qs], -1)
    kk = torch.cat([torch.cat([torch.zeros_like(ks), ks], -1), torch.cat([kw, torch.zeros_like(kw)], -1)], 2)
    return torch.nn.functional.scaled_dot_product_attention(qq, kk, torch.cat([vs, vw], 2), attn_mask=allow,
                                                            scale=scale)


def lambda_attention_reference(q, k, v, *, sinks: int, window: int, cap: int | None, inv_freq, scale=None):
    """Brute-force specification of `lambda_attention`, for tests: un-rotate q and k to position 0,
    then for every (i, j) pair rotate q by its *effective* distance d(i, j) and take the dot product.

    d(i, j) = i − j inside the window, min(i, cap) − j for a sink outside it, masked otherwise.
    O(Tq · Tk · D) memory — tiny inputs only.
    """
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scale = scale or 1.0 / math.sqrt(D)
    qpos = torch.arange(Tk - Tq, Tk)
    kpos = torch.arange(Tk)
    q0 = rotate(q.float(), -qpos, inv_freq)
    k0 = rotate(k.float(), -kpos, inv_freq).repeat_interleave(Hq // Hkv, 1)
    vf = v.float().repeat_interleave(Hq // Hkv, 1)
    out = torch.zeros(B, Hq, Tq, D)
    for a, i in enumerate(qpos.tolist()):
        d, keep = [], []
        for j in range(Tk):
            if 0 <= i - j < window:
                d.append(i - j); keep.append(j)
            elif j < sinks and j <= i:
                d.append((i if cap is None else min(i, cap)) - j); keep.append(j)
        qd = rotate(q0[:, :, a:a + 1].expand(B, Hq, len(d), D), torch.tensor(d), inv_freq)  # q at distance d
        sc = (qd * k0[:, :, keep]).sum(-1) * scale
        out[:, :, a] = torch.softmax(sc, -1)[..., None].mul(vf[:, :, keep]).sum(-2)
    return out.to(q.dtype)


# ---- patterns: callables hung on attention modules ---------------------------------------------


@dataclass
class Dense:
    """Plain causal attention (SDPA) — the baseline, through the same code path as the patterns."""

    def __call__(self, q, k, v, *, scale, layer):
        G = q.shape[1] // k.shape[1]
        Tq, Tk = q.shape[2], k.shape[2]
        mask = None if Tq == Tk else (torch.arange(Tk, device=q.device)[None, :]
                                      <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None])
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask,
            is_causal=(Tq == Tk), scale=scale)


@dataclass
class Lambda:
    """Λ attention (`lambda_attention`) on every layer and head: S sinks, window W, distance cap."""
    sinks: int
    window: int
    cap: int | None = None
    inv_freq: torch.Tensor | None = None
    chunk: int = 512

    def __call__(self, q, k, v, *, scale, layer):
        if self.window >= k.shape[2]:          # everything is in the window: exactly causal attention
            return Dense()(q, k, v, scale=scale, layer=layer)
        return lambda_attention(q, k, v, sinks=self.sinks, window=self.window, cap=self.cap,
                                inv_freq=self.inv_freq, scale=scale, chunk=self.chunk)


@dataclass
class BlockSparse:
    """Block-sparse prefill with `tokenbook.kernels.block_sparse_attention`: `layouts(q, k, layer)`
    returns a bool layout ``[1 or B, 1 or Hq, nq, nk]``; dense layers (``layout is None``) use SDPA.

    `stats` collects the density of every layout used (to report FLOPs saved).
    """
    layouts: Callable
    block_size: int = 64
    backend: str = "auto"
    stats: list = field(default_factory=list)

    def __call__(self, q, k, v, *, scale, layer):
        from tokenbook.kernels.block_sparse_attention import block_sparse_attention
        from tokenbook.kernels.sparse_layouts import density
        if q.shape[2] < 2 * self.block_size:
            return Dense()(q, k, v, scale=scale, layer=layer)  # decoding or tiny prompts: dense
        layout = self.layouts(q, k, layer)
        if layout is None:
            return Dense()(q, k, v, scale=scale, layer=layer)
        self.stats.append((layer, density(layout)))
        return block_sparse_attention(q, k, v, layout, block_size=self.block_size, scale=scale,
                                      backend=self.backend)


# ---- switching a model to a pattern ------------------------------------------------------------


def attention_modules(model) -> list:
    """The attention modules of a Llama-family model, in layer order (they carry `layer_idx`)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not mods:
        raise ValueError("no attention modules (with layer_idx and q_proj) found: not a Llama-family model?")
    return sorted(mods, key=lambda m: m.layer_idx)


@contextmanager
def apply(model, pattern):
    """Run `model` with `pattern` (one callable for all layers, or a list with one per layer)."""
    from tokenbook.attention import PATTERN, register_pattern_attention, use_attention
    register_pattern_attention()
    mods = attention_modules(model)
    per_layer = list(pattern) if isinstance(pattern, (list, tuple)) else [pattern] * len(mods)
    if len(per_layer) != len(mods):
        raise ValueError(f"{len(per_layer)} patterns for {len(mods)} layers")
    for m, p in zip(mods, per_layer):
        m.tokenbook_pattern = p
    try:
        with use_attention(model, PATTERN):
            yield model
    finally:
        for m in mods:
            m.__dict__.pop("tokenbook_pattern", None)


def truncate_cache(cache, length: int) -> None:
    """Cut a HF DynamicCache back to its first `length` positions (in place), on any 5.x version."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


# ---- per-head pattern search (MInference-style) --------------------------------------------------


def capture_qk(model, input_ids: torch.Tensor, layers=None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Run the model densely once and keep each layer's RoPE'd (q, k): {layer: (q [B,Hq,T,D], k [B,Hkv,T,D])}."""
    kept = {}

    class Capture(Dense):
        def __call__(self, q, k, v, *, scale, layer):
            if layers is None or layer in layers:
                kept[layer] = (q.detach(), k.detach())
            return super().__call__(q, k, v, scale=scale, layer=layer)

    with torch.inference_mode(), apply(model, Capture()):
        model(input_ids=input_ids)
    return kept


def last_query_attention(q: torch.Tensor, k: torch.Tensor, n_last: int, scale: float | None = None) -> torch.Tensor:
    """Attention probabilities ``[B, Hq, n_last, Tk]`` (fp32) of the last `n_last` queries (causal)."""
    B, Hq, Tq, D = q.shape
    G = Hq // k.shape[1]
    Tk = k.shape[2]
    scale = scale or 1.0 / math.sqrt(D)
    qs = q[:, :, -n_last:].float()
    sc = qs @ k.float().repeat_interleave(G, 1).transpose(-1, -2) * scale
    pos = torch.arange(Tk - n_last, Tk, device=q.device)
    sc = sc.masked_fill(torch.arange(Tk, device=q.device)[None, :] > pos[:, None], float("-inf"))
    return torch.softmax(sc, -1)


def vertical_slash_indices(probs: torch.Tensor, n_vertical: int, n_slash: int, n_last_forced: int = 64):
    """MInference's online index estimate from the last queries' attention ``probs [B, Hq, n, Tk]``:
    the `n_vertical` key columns with the most mass, and the `n_slash` diagonals (offsets) with the
    most mass; column 0..3 (sinks) and offsets 0..n_last_forced−1 (the local band) are always kept.
    Returns (vertical [B, Hq, Nv], slash [B, Hq, Ns]) as int64 token indices.
    """
    B, H, n, Tk = probs.shape
    col = probs.sum(2)                                                       # [B, H, Tk]
    col[..., :4] = float("inf")
    v_idx = col.topk(min(n_vertical, Tk), -1).indices
    qpos = torch.arange(Tk - n, Tk, device=probs.device)
    off = (qpos[:, None] - torch.arange(Tk, device=probs.device)[None, :]).clamp(min=0)  # [n, Tk]
    diag = torch.zeros(B, H, Tk, device=probs.device)
    diag.scatter_add_(-1, off.reshape(1, 1, -1).expand(B, H, -1), probs.reshape(B, H, -1))
    diag[..., :n_last_forced] = float("inf")
    s_idx = diag.topk(min(n_slash, Tk), -1).indices
    return v_idx, s_idx


def layout_recall(probs: torch.Tensor, layout: torch.Tensor, block_size: int) -> torch.Tensor:
    """Attention mass ``[B, Hq]`` of the last queries (``probs [B, Hq, n, Tk]``) that a block layout
    keeps — the search objective: how much of dense attention the pattern preserves."""
    from tokenbook.kernels.block_sparse_attention_reference import token_mask_from_layout
    n, Tk = probs.shape[-2:]
    # prefill: the layout covers all Tk queries; keep the rows of the last n
    mask = token_mask_from_layout(layout, Tk, Tk, block_size)[..., -n:, :]
    return (probs * mask).sum(-1).mean(-1)
