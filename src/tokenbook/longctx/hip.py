"""HiP attention (Lee et al., arXiv:2406.09827): training-free hierarchical top-k key-block selection.

Attention in a pretrained LLM is *local* in score: keys close together get similar logits. HiP
uses this to find, for every query block, the key blocks with the largest logits without scoring
them all — a tree search over the key sequence:

    1. split the keys a query block may see (causally) into k equal branches;
    2. split every branch in two; score each half by one *representative* key block — its first
       block, as the authors' v1 kernel does (the ICLR text describes the centre token instead:
       `representative="center"`, the `hip_center` arm) — by the largest logit q·k between the
       query block's queries and that block's keys;
    3. keep the k best halves and repeat 2 until every branch is one key block.

That is log2(n / k) rounds of 2k block scores per query block instead of n (n = visible key
blocks): O(T log T) work for the mask of a T-token prompt, O(T) memory. The chosen k blocks,
plus the diagonal block, drive the shared block-sparse kernel
(`tokenbook.kernels.block_sparse_attention`: Triton on CUDA, its PyTorch twin on CPU) through
`patterns.BlockSparse`; every layout here is finished by the shared `sparse_layouts.topk_layout`.

What this module provides:

- `hip_select` (vectorised over heads and query blocks) and `hip_select_reference` (a plain loop,
  the specification the tests hold it to);
- `hip_center`: the same search scoring each branch by its centre block (an ablation);
- the baselines at **equal budget** — every arm keeps, per query block and head, the diagonal
  block plus k others: `exact_topk_layout` (the brute-force top-k of the same block score, what
  the tree search approximates), `streaming_layout` (StreamingLLM: sink blocks + a local window,
  the Λ layout), `random_layout` (k random visible blocks);
- `arm_pattern`: each arm as a pattern for `patterns.apply` (all 30 layers, every head);
- `selection_quality`: on one layer's q, k — recall of the exact top-k and the share of dense
  attention mass each arm's layout keeps (the paper's approximation claim).

Shapes: B batch, Hq / Hkv query / key-value heads (GQA: head h reads h // (Hq / Hkv)), T tokens,
D head dim, bs block size (query block = key block: the kernel's square blocks), nq / nk query /
key blocks, K key blocks chosen per query block, R query blocks in a chunk, C candidate branches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..kernels import sparse_layouts as sl
from . import patterns as pt

ARMS = ("dense", "hip", "hip_center", "exact_topk", "streaming", "random")
LABEL = {"dense": "dense (SDPA)", "hip": "HiP (tree search)", "hip_center": "HiP, centre representative",
         "exact_topk": "exact top-k (brute force)", "streaming": "StreamingLLM (sinks + window)",
         "random": "random blocks"}
REPRESENTATIVES = ("first", "center")


@dataclass(frozen=True)
class Budget:
    """The selection budget, the same for every sparse arm: each query block keeps its diagonal
    block plus `k` others (StreamingLLM spends `sink_blocks` of its k on the first blocks)."""
    block_size: int = 32
    k: int = 8
    sink_blocks: int = 1            # StreamingLLM only; HiP, exact and random keep no forced sinks
    representative: str = "first"   # which block of a branch is scored: its first (v1 code) or its centre
    q_stride: int = 1               # score with every q_stride-th query of the block (the paper's b_sq)
    chunk_elems: int = 1 << 25      # memory bound for gathered keys / scores per chunk of query blocks

    def __post_init__(self):
        bs = self.block_size
        if bs < 16 or bs & (bs - 1):
            raise ValueError(f"block_size must be a power of two >= 16 (the kernel's blocks), got {bs}")
        if self.k < 1:
            raise ValueError(f"k (key blocks per query block) must be >= 1, got {self.k}")
        if not 0 <= self.sink_blocks <= self.k:
            raise ValueError(f"sink_blocks must be in [0, k={self.k}], got {self.sink_blocks}")
        if self.representative not in REPRESENTATIVES:
            raise ValueError(f"representative must be one of {REPRESENTATIVES}, got {self.representative!r}")
        if self.q_stride < 1:
            raise ValueError(f"q_stride must be >= 1, got {self.q_stride}")


# ---- blocks and block scores ------------------------------------------------------------------


def _blocks(x: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, H, T, D]`` -> zero-padded blocks ``[B, H, n, bs, D]`` and the real-token mask ``[n, bs]``."""
    B, H, T, D = x.shape
    n = -(-T // bs)
    xb = torch.nn.functional.pad(x, (0, 0, 0, n * bs - T)).reshape(B, H, n, bs, D)
    real = (torch.arange(n * bs, device=x.device) < T).reshape(n, bs)
    return xb, real


def _diagonal(nq: int, nk: int, device) -> torch.Tensor:
    """Key block aligned with each query block ``[nq]`` (queries are the last positions; see sparse_layouts)."""
    return torch.arange(nq, device=device) + (nk - nq)


def _check(q: torch.Tensor, k: torch.Tensor, bs: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q must be [B, Hq, Tq, D] and k [B, Hkv, Tk, D], got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq > Tk or (Tk - Tq) % bs:
        raise ValueError(f"block selection needs the queries to be the last Tq of Tk positions with "
                         f"(Tk - Tq) % block_size == 0 (prefill: Tq = Tk), got Tq={Tq}, Tk={Tk}, bs={bs}")


def representative_scores(qb: torch.Tensor, q_real: torch.Tensor, kb: torch.Tensor, rep: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """Largest logit ``[B, Hq, R, C]`` between each query block and each candidate key block.

    qb ``[B, Hq, R, bq, D]`` (a chunk of query blocks), q_real ``[R, bq]`` (padding queries are
    ignored), kb ``[B, Hkv, nk, bs, D]`` (all key blocks), rep ``[B, Hq, R, C]`` key-block indices.
    The candidates always lie strictly before the diagonal, so every key in them is real and visible.
    """
    B, Hq = qb.shape[:2]
    G = Hq // kb.shape[1]
    bi = torch.arange(B, device=rep.device)[:, None, None, None]
    hi = (torch.arange(Hq, device=rep.device) // G)[None, :, None, None]
    C, bs, D = rep.shape[-1], kb.shape[3], kb.shape[4]
    kg = kb[bi, hi, rep].reshape(B, Hq, rep.shape[2], C * bs, D)              # [B, Hq, R, C·bs, D]
    s = (qb @ kg.transpose(-1, -2)).unflatten(-1, (C, bs)).amax(-1)           # [B, Hq, R, bq, C]
    s = s.float().masked_fill(~q_real[None, None, :, :, None], float("-inf"))
    return s.amax(-2) * scale


def block_max_scores(q: torch.Tensor, k: torch.Tensor, block_size: int, *, scale: float | None = None,
                     q_stride: int = 1, chunk_elems: int = 1 << 25) -> torch.Tensor:
    """Brute force: the largest causal logit ``[B, Hq, nq, nk]`` (fp32) of every (query block, key block)
    pair, -inf where no query of the block may see a key of it. O(T² D): the score HiP searches."""
    _check(q, k, block_size)
    B, Hq, Tq, D = q.shape
    Tk, G, bs = k.shape[2], Hq // k.shape[1], block_size
    scale = scale or 1.0 / math.sqrt(D)
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    kk = torch.nn.functional.pad(k.float().repeat_interleave(G, 1), (0, 0, 0, nk * bs - Tk))
    kpos = torch.arange(nk * bs, device=q.device)
    out = torch.empty(B, Hq, nq, nk, device=q.device)
    rows = max(1, chunk_elems // max(1, B * Hq * bs * nk * bs))
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        qpos = torch.arange(r0 * bs, r1 * bs, device=q.device)
        qc = torch.nn.functional.pad(q[:, :, r0 * bs:r1 * bs].float(), (0, 0, 0, (r1 - r0) * bs - min(Tq, r1 * bs) + r0 * bs))
        ok = (kpos[None, :] <= qpos[:, None] + (Tk - Tq)) & (kpos[None, :] < Tk) & (qpos[:, None] < Tq)
        ok &= (torch.arange(bs, device=q.device) % q_stride == 0).repeat(r1 - r0)[:, None]
        s = (qc @ kk.transpose(-1, -2) * scale).masked_fill(~ok, float("-inf"))
        out[:, :, r0:r1] = s.reshape(B, Hq, r1 - r0, bs, nk, bs).amax((3, 5))
    return out


# ---- the tree search -------------------------------------------------------------------------


def _rows_per_chunk(B: int, Hq: int, bq: int, bs: int, D: int, K: int, limit: int) -> int:
    per_row = B * Hq * 2 * K * bs * max(D, bq)
    return max(1, limit // max(1, per_row))


def hip_select(q: torch.Tensor, k: torch.Tensor, b: Budget, *, scale: float | None = None) -> torch.Tensor:
    """HiP's key blocks ``[B, Hq, nq, K]`` (int64, ascending per row; -1 pads rows that see fewer
    than K blocks) for every query block and head, by hierarchical pruning.

    Row r may use key blocks 0 .. diag(r) - 1 (n of them; its diagonal is always attended and is
    not a candidate). Rows with n <= K take them all. Otherwise the n blocks are split into K
    branches; each round splits every branch in two, scores each half by its representative block
    (`representative_scores`) and keeps the best K halves; after ceil(log2(ceil(n / K))) rounds
    every branch is a single block.
    """
    _check(q, k, b.block_size)
    B, Hq, Tq, D = q.shape
    Tk, bs, K = k.shape[2], b.block_size, b.k
    scale = scale or 1.0 / math.sqrt(D)
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    qb, q_real = _blocks(q, bs)
    qb, q_real = qb[:, :, :, ::b.q_stride], q_real[:, ::b.q_stride]
    kb, _ = _blocks(k, bs)
    n_all = _diagonal(nq, nk, q.device)                                    # visible past blocks per row
    out = torch.full((B, Hq, nq, K), -1, dtype=torch.long, device=q.device)
    rows = _rows_per_chunk(B, Hq, qb.shape[3], bs, D, K, b.chunk_elems)
    i = torch.arange(K, device=q.device)
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        n = n_all[r0:r1]
        # K branches [s, e) over blocks 0..n-1 (empty branches when n < K)
        s = ((i[None, :] * n[:, None]) // K).expand(B, Hq, -1, -1)
        e = (((i[None, :] + 1) * n[:, None]) // K).expand(B, Hq, -1, -1)
        top_n = int(n.max())
        rounds = math.ceil(math.log2(-(-top_n // K))) if top_n > K else 0
        for _ in range(rounds):
            mid = s + (e - s + 1) // 2                                     # left half takes the odd block
            cs, ce = torch.cat([s, mid], -1), torch.cat([mid, e], -1)      # [B, Hq, R, 2K] children
            live = ce > cs
            rep = (cs + ce - 1) // 2 if b.representative == "center" else cs
            sc = representative_scores(qb[:, :, r0:r1], q_real[r0:r1], kb, torch.where(live, rep, 0), scale)
            pick = sc.masked_fill(~live, float("-inf")).topk(K, -1).indices
            s, e = cs.gather(-1, pick), ce.gather(-1, pick)
        out[:, :, r0:r1] = _sorted_with_pad(torch.where(e > s, s, -1))
    return out


def _sorted_with_pad(idx: torch.Tensor) -> torch.Tensor:
    """Sort the chosen blocks of each row ascending, -1 padding last."""
    big = torch.iinfo(torch.long).max
    srt = torch.where(idx < 0, big, idx).sort(-1).values
    return torch.where(srt == big, -1, srt)


def hip_select_reference(q: torch.Tensor, k: torch.Tensor, b: Budget, *, scale: float | None = None) -> torch.Tensor:
    """The same search written as plain loops over batch, head and query block — the specification
    `hip_select` is tested against (tiny inputs only)."""
    _check(q, k, b.block_size)
    B, Hq, Tq, D = q.shape
    Tk, bs, K, G = k.shape[2], b.block_size, b.k, Hq // k.shape[1]
    scale = scale or 1.0 / math.sqrt(D)
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    out = torch.full((B, Hq, nq, K), -1, dtype=torch.long)
    for bb in range(B):
        for h in range(Hq):
            for r in range(nq):
                n = r + nk - nq
                lo, hi = r * bs, min(Tq, (r + 1) * bs)
                qs = q[bb, h, lo:hi][::b.q_stride].float()

                def score(c):
                    ks = k[bb, h // G, c * bs:(c + 1) * bs].float()
                    return float((qs @ ks.T).max()) * scale

                if n <= K:
                    chosen = list(range(n))
                else:
                    nodes = [(j * n // K, (j + 1) * n // K) for j in range(K)]
                    while any(e - s > 1 for s, e in nodes):
                        kids = []
                        for s, e in nodes:
                            m = s + (e - s + 1) // 2
                            kids += [(s, m)] + ([(m, e)] if e > m else [])
                        reps = [((s + e - 1) // 2 if b.representative == "center" else s) for s, e in kids]
                        ranked = sorted(range(len(kids)), key=lambda j: -score(reps[j]))
                        nodes = [kids[j] for j in ranked[:K]]
                    chosen = sorted(s for s, _ in nodes)
                out[bb, h, r, :len(chosen)] = torch.tensor(chosen, dtype=torch.long)
    return out


# ---- layouts at equal budget --------------------------------------------------------------------


def layout_from_blocks(idx: torch.Tensor, nk: int, sink_blocks: int = 0) -> torch.Tensor:
    """Chosen key blocks ``[B, H, nq, K]`` (-1 = none) -> bool layout ``[B, H, nq, nk]`` with the
    diagonal (and `sink_blocks` first blocks) added, via the shared `sparse_layouts.topk_layout`."""
    B, H, nq, K = idx.shape
    scores = torch.full((B, H, nq, nk + 1), float("-inf"), device=idx.device)
    scores.scatter_(-1, torch.where(idx < 0, nk, idx), 1.0)
    return sl.topk_layout(scores[..., :nk], K, sink_blocks=sink_blocks)


def _no_diagonal(scores: torch.Tensor) -> torch.Tensor:
    """Block scores with the diagonal excluded (it is added to every layout anyway, outside the budget)."""
    nq, nk = scores.shape[-2:]
    diag = torch.nn.functional.one_hot(_diagonal(nq, nk, scores.device), nk).bool()
    return scores.masked_fill(diag, float("-inf"))


def hip_layout(q: torch.Tensor, k: torch.Tensor, b: Budget, scale: float | None = None) -> torch.Tensor:
    """HiP's layout ``[B, Hq, nq, nk]``: the tree search's K blocks + the diagonal."""
    return layout_from_blocks(hip_select(q, k, b, scale=scale), -(-k.shape[2] // b.block_size))


def exact_topk_layout(q: torch.Tensor, k: torch.Tensor, b: Budget, scale: float | None = None) -> torch.Tensor:
    """The exact top-K blocks of the same score (brute force, O(T²)) + the diagonal."""
    sc = block_max_scores(q, k, b.block_size, scale=scale, q_stride=b.q_stride, chunk_elems=b.chunk_elems)
    return sl.topk_layout(_no_diagonal(sc), b.k)


def streaming_layout(nq: int, nk: int, b: Budget, device=None) -> torch.Tensor:
    """StreamingLLM at the same budget: `sink_blocks` first blocks + the K − sinks blocks before the
    diagonal + the diagonal (the Λ layout of `sparse_layouts.lambda_layout`)."""
    return sl.lambda_layout(nq, nk, b.sink_blocks, b.k - b.sink_blocks + 1, device=device)


def random_layout(nq: int, nk: int, heads: int, b: Budget, generator: torch.Generator, device=None) -> torch.Tensor:
    """K visible blocks drawn uniformly at random per head and query block, + the diagonal."""
    u = torch.rand(1, heads, nq, nk, generator=generator).to(device)
    return sl.topk_layout(_no_diagonal(u), b.k)


def arm_layout(name: str, q: torch.Tensor, k: torch.Tensor, b: Budget, *, layer: int = 0, seed: int = 0,
               scale: float | None = None) -> torch.Tensor:
    """Layout ``[1 or B, 1 or Hq, nq, nk]`` of a sparse arm for this layer's q, k."""
    bs = b.block_size
    nq, nk = -(-q.shape[2] // bs), -(-k.shape[2] // bs)
    if name == "hip":
        return hip_layout(q, k, b, scale)
    if name == "hip_center":
        return hip_layout(q, k, replace(b, representative="center"), scale)
    if name == "exact_topk":
        return exact_topk_layout(q, k, b, scale)
    if name == "streaming":
        return streaming_layout(nq, nk, b, q.device)
    if name == "random":
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer))
        return random_layout(nq, nk, q.shape[1], b, g, q.device)
    raise ValueError(f"unknown sparse arm {name!r}; known: {ARMS[1:]}")


def arm_pattern(name: str, b: Budget, *, seed: int = 0, backend: str = "auto"):
    """A pattern for `patterns.apply` (every layer, every head): dense SDPA or block-sparse attention
    over the arm's layout (its `.stats` collects the layouts' densities)."""
    if name == "dense":
        return pt.Dense()
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; known: {ARMS}")
    return pt.BlockSparse(layouts=lambda q, k, layer: arm_layout(name, q, k, b, layer=layer, seed=seed),
                          block_size=b.block_size, backend=backend)


# ---- how good is the selection? -----------------------------------------------------------------


def block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, *, scale: float | None = None,
               chunk_elems: int = 1 << 25) -> torch.Tensor:
    """Dense causal attention mass ``[B, Hq, nq, nk]`` (fp32) each key block receives, averaged over
    the real queries of each query block (rows sum to 1)."""
    _check(q, k, block_size)
    B, Hq, Tq, D = q.shape
    Tk, G, bs = k.shape[2], Hq // k.shape[1], block_size
    scale = scale or 1.0 / math.sqrt(D)
    nq, nk = -(-Tq // bs), -(-Tk // bs)
    kk = k.float().repeat_interleave(G, 1)
    out = torch.zeros(B, Hq, nq, nk, device=q.device)
    rows = max(1, chunk_elems // max(1, B * Hq * bs * Tk))
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        lo, hi = r0 * bs, min(Tq, r1 * bs)
        pos = torch.arange(lo, hi, device=q.device) + (Tk - Tq)
        s = (q[:, :, lo:hi].float() @ kk.transpose(-1, -2)) * scale
        s = s.masked_fill(torch.arange(Tk, device=q.device)[None, :] > pos[:, None], float("-inf"))
        p = torch.nn.functional.pad(torch.softmax(s, -1), (0, nk * bs - Tk, 0, r1 * bs - hi))
        blk = p.reshape(B, Hq, r1 - r0, bs, nk, bs).sum(-1)                # [B, H, R, bs, nk]
        n_real = torch.clamp(Tq - torch.arange(r0, r1, device=q.device) * bs, max=bs).float()
        out[:, :, r0:r1] = blk.sum(3) / n_real[:, None]
    return out


def _as_sets(layout: torch.Tensor, nq: int, nk: int) -> torch.Tensor:
    """Layout without its diagonal (the part the budget chooses) ``[B, H, nq, nk]`` bool."""
    diag = torch.nn.functional.one_hot(_diagonal(nq, nk, layout.device), nk).bool()
    return layout & ~diag


def selection_quality(q: torch.Tensor, k: torch.Tensor, b: Budget, *, layer: int = 0, seed: int = 0,
                      scale: float | None = None,
                      arms=("hip", "hip_center", "exact_topk", "streaming", "random")) -> dict:
    """Per head ``[Hq]`` (batch of one), over the query blocks that must choose (more than K visible
    blocks), for every arm: `recall_exact.<arm>` — the share of the exact top-K blocks of the block
    score (needs the `exact_topk` arm) it kept; `recall_mass_topk.<arm>` — the share of the K blocks
    with the most dense attention mass it kept; `mass.<arm>` — the share of dense attention its layout
    keeps (the diagonal included). And `mass_oracle` (the most any K blocks + the diagonal keep),
    `mass_diagonal` (the diagonal alone)."""
    bs, K = b.block_size, b.k
    nq, nk = -(-q.shape[2] // bs), -(-k.shape[2] // bs)
    choosing = _diagonal(nq, nk, q.device) > K                                     # [nq]
    if not bool(choosing.any()):
        raise ValueError(f"no query block sees more than k={K} blocks: the prompt is too short to select")
    mass = block_mass(q, k, bs, scale=scale, chunk_elems=b.chunk_elems)[0]         # [H, nq, nk]
    diag = torch.nn.functional.one_hot(_diagonal(nq, nk, q.device), nk).bool()
    oracle = _as_sets(sl.topk_layout(_no_diagonal(mass), K)[0], nq, nk)            # [H, nq, nk]
    lay = {a: arm_layout(a, q, k, b, layer=layer, seed=seed, scale=scale).expand(1, q.shape[1], nq, nk)[0]
           for a in arms}

    def over_rows(x):                                                              # [H, nq] -> [H]
        return x[:, choosing].float().mean(-1).cpu()

    out = {"mass_oracle": over_rows((mass * (oracle | diag)).sum(-1)), "mass_diagonal": over_rows((mass * diag).sum(-1))}
    exact = _as_sets(lay["exact_topk"], nq, nk) if "exact_topk" in lay else None
    for a, L in lay.items():
        chosen = _as_sets(L, nq, nk)
        out[f"mass.{a}"] = over_rows((mass * L).sum(-1))
        out[f"recall_mass_topk.{a}"] = over_rows((chosen & oracle).sum(-1) / K)
        if exact is not None:
            out[f"recall_exact.{a}"] = over_rows((chosen & exact).sum(-1) / K)
    return out
