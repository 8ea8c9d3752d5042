"""Squeezed Attention (Hooper et al., 2024, arXiv:2411.09688): cluster a fixed context's keys offline,
look up only the relevant clusters at query time.

Many applications put the same long *fixed context* (a manual, a code base, few-shot examples) in
front of every user input. Squeezed Attention does the expensive part once, offline, and makes each
query cheap:

1. **Offline.** Prefill the fixed context once (keys keep the RoPE of their positions). Per layer and
   KV head, cluster its N keys with k-means on their *directions* (keys L2-normalised, k-means++
   seeding; `kmeans`) into C ≈ 5% of N clusters; each cluster j is represented by the mean C_j of
   its (raw) keys and its size N_j. Optionally a second, coarser level clusters the fine centroids
   (`build_index(n_coarse=...)`).
2. **Online, per query token q.** Estimate the attention probability of every key of cluster j from
   its centroid alone (`cluster_scores`):

       S_j = exp(q·C_j / √D) / Σ_i N_i exp(q·C_i / √D),

   the softmax with each cluster's keys all placed at the centroid. Keys whose cluster scores high
   are kept: either every key with S above a global threshold τ (the paper; τ is calibrated offline
   as a quantile of the scores of the fixed context's own last queries so that a target fraction
   f of keys is kept on average; `calibrate_thresholds`), or exactly ⌈f·N⌉ keys per head and
   query, taken from the best clusters down (`top_cluster_keys`, an equal-budget variant).
   The **hierarchical** lookup first scores the coarse centroids, keeps the coarse clusters that
   hold the best `expand`·budget keys, and scores only the fine centroids inside them, so a query
   compares with far fewer than C centroids (`hierarchical_scores`).
3. **Attention** is then exact softmax attention over the kept fixed-context keys plus all keys of
   the user input (`FixedContextAttention`, a pattern for `tokenbook.longctx.patterns.apply`; on the
   CPU the skipped keys are masked, which is numerically the same as gathering the kept ones;
   `gathered_decode_attention` is the gather path a GPU timing uses).

GQA: the Hq query heads share Hkv key heads (head h reads h // G, G = Hq / Hkv). Clustering is per
KV head; a KV head's score is the mean of its G query heads' S, so all G heads read one kept set
(what saves memory traffic).

Shapes: Hq / Hkv query / key-value heads, N fixed-context keys, C clusters (C1 coarse), D head dim,
Tq queries in a call, Tu user tokens so far, B batch rows (one per method arm in the chapter).
Book chapter: `squeezed-attn`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# ---- 1. k-means (deterministic, batched over heads) ------------------------------------------


def _sq_dists(x: torch.Tensor, c: torch.Tensor, spherical: bool) -> torch.Tensor:
    """Squared distances [G, N, K] between x [G, N, D] and c [G, K, D] (unit vectors: 2 − 2·x·c)."""
    dots = x @ c.transpose(-1, -2)
    if spherical:
        return (2 - 2 * dots).clamp_min(0)
    return ((x * x).sum(-1, keepdim=True) - 2 * dots + (c * c).sum(-1)[:, None, :]).clamp_min(0)


def _assign(x: torch.Tensor, c: torch.Tensor, spherical: bool, chunk_elems: int = 1 << 26) -> torch.Tensor:
    """Nearest centroid [G, N] (for unit vectors: the largest dot product), in chunks of N so that no
    [G, chunk, K] block exceeds `chunk_elems` (a 131k-key context with 6.5k clusters fits in memory)."""
    G, N, _ = x.shape
    step = max(1, chunk_elems // max(1, G * c.shape[1]))
    out = []
    for s in range(0, N, step):
        xs = x[:, s:s + step]
        out.append((xs @ c.transpose(-1, -2)).argmax(-1) if spherical else _sq_dists(xs, c, False).argmin(-1))
    return torch.cat(out, 1)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0, spherical: bool = True,
           init: str = "kmeans++"):
    """k-means on G independent point sets x [G, N, D] (one per head), deterministic for a seed.

    `init`: "kmeans++" seeding (the paper's) or "random" (k distinct points; cheap for very large k),
    then Lloyd iterations until no label changes (at most `iters`). With `spherical` the points are
    L2-normalised first and centroids re-normalised after each update (cosine k-means: keys grouped
    by direction, as the paper does). An emptied cluster keeps its previous centroid. Returns
    (unit-or-plain centroids [G, k, D], labels [G, N] int64, inertia [G]: the summed squared distance
    of the points to their centroid, in the space that was clustered).
    """
    if x.dim() != 3:
        raise ValueError(f"kmeans expects x [G, N, D], got shape {tuple(x.shape)}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"unknown init {init!r}; valid: kmeans++, random")
    G, N, D = x.shape
    if k < 1:
        raise ValueError(f"need k >= 1 clusters, got {k}")
    k = min(k, N)
    pts = torch.nn.functional.normalize(x.float(), dim=-1) if spherical else x.float()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    ar = torch.arange(G, device=x.device)
    if init == "random":
        pick = torch.rand(G, N, generator=gen).argsort(-1)[:, :k].to(x.device)
        c = pts.gather(1, pick[..., None].expand(-1, -1, D))
    else:
        c = torch.empty(G, k, D, device=x.device)
        c[:, 0] = pts[ar, torch.randint(N, (G,), generator=gen).to(x.device)]
        d2 = _sq_dists(pts, c[:, :1], spherical)[..., 0]                 # [G, N] to the nearest centroid
        for j in range(1, k):
            w = d2.cpu().double() + 1e-12
            nxt = torch.multinomial(w, 1, generator=gen)[:, 0].to(x.device)
            c[:, j] = pts[ar, nxt]
            d2 = torch.minimum(d2, _sq_dists(pts, c[:, j:j + 1], spherical)[..., 0])
    labels = _assign(pts, c, spherical)
    for _ in range(iters):
        sums = torch.zeros_like(c).scatter_add_(1, labels[..., None].expand(-1, -1, D), pts)
        counts = torch.zeros(G, k, device=x.device).scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float))
        new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], c)
        c = torch.nn.functional.normalize(new, dim=-1) if spherical else new
        new_labels = _assign(pts, c, spherical)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    inertia = ((pts - c.gather(1, labels[..., None].expand(-1, -1, D))) ** 2).sum((-1, -2))
    return c, labels, inertia


def cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cluster: the mean of the raw points [G, k, D] (0 for an empty cluster) and the size [G, k]."""
    G, N, D = x.shape
    sums = torch.zeros(G, k, D, device=x.device).scatter_add_(1, labels[..., None].expand(-1, -1, D), x.float())
    counts = torch.zeros(G, k, device=x.device).scatter_add_(1, labels, torch.ones(G, N, device=x.device))
    return sums / counts.clamp_min(1)[..., None], counts


# ---- 2. the offline index ---------------------------------------------------------------------


@dataclass
class ClusterIndex:
    """One layer's clusters (per KV head): centroids [Hkv, C, D] (means of the raw keys), labels
    [Hkv, N] (each key's cluster), counts [Hkv, C]; with the coarse level, coarse centroids
    [Hkv, C1, D], `parent` [Hkv, C] (each fine cluster's coarse cluster) and coarse_counts [Hkv, C1]
    (keys under each coarse cluster). `order` [Hkv, N] lists the keys sorted by cluster and
    `offsets` [Hkv, C + 1] where each cluster starts in it (the CSR layout the gather path reads)."""
    centroids: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor
    order: torch.Tensor
    offsets: torch.Tensor
    coarse: torch.Tensor | None = None
    parent: torch.Tensor | None = None
    coarse_counts: torch.Tensor | None = None

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[1]

    @property
    def n_keys(self) -> int:
        return self.labels.shape[1]


def build_index(keys: torch.Tensor, n_clusters: int, *, n_coarse: int | None = None, iters: int = 25,
                seed: int = 0, init: str = "kmeans++") -> ClusterIndex:
    """Cluster keys [Hkv, N, D] of one layer (cosine k-means per head); optionally a coarse level of
    `n_coarse` clusters over the fine centroids' directions."""
    H, N, D = keys.shape
    _, labels, _ = kmeans(keys, n_clusters, iters=iters, seed=seed, init=init)
    C = min(n_clusters, N)
    cent, counts = cluster_means(keys, labels, C)
    order = torch.sort(labels, dim=-1, stable=True).indices
    offsets = torch.zeros(H, C + 1, dtype=torch.long, device=keys.device)
    offsets[:, 1:] = counts.long().cumsum(-1)
    idx = ClusterIndex(cent, labels, counts, order, offsets)
    if n_coarse:
        # cluster the fine centroids' directions (an empty fine cluster, a zero vector, adds no keys)
        _, parent, _ = kmeans(cent, n_coarse, iters=iters, seed=seed + 1)
        C1 = min(n_coarse, C)
        sums = torch.zeros(H, C1, D, device=keys.device).scatter_add_(
            1, parent[..., None].expand(-1, -1, D), cent * counts[..., None])
        ccounts = torch.zeros(H, C1, device=keys.device).scatter_add_(1, parent, counts)
        idx.coarse, idx.parent, idx.coarse_counts = sums / ccounts.clamp_min(1)[..., None], parent, ccounts
    return idx


def slice_index(index: ClusterIndex, heads: slice) -> ClusterIndex:
    """The ClusterIndex of some heads (an index built for every layer's heads at once, split per layer)."""
    pick = lambda t: None if t is None else t[heads]  # noqa: E731
    return ClusterIndex(*(pick(getattr(index, f)) for f in ("centroids", "labels", "counts", "order", "offsets",
                                                            "coarse", "parent", "coarse_counts")))


# ---- 3. scoring centroids ---------------------------------------------------------------------


def cluster_scores(q: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor, scale: float,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """S_j = exp(q·C_j·scale) / Σ_i N_i exp(q·C_i·scale), per query head: q [..., Hq, Tq, D],
    centroids [Hkv, C, D], counts [Hkv, C] → [..., Hq, Tq, C] (query head h reads KV head h // G).
    `allowed` [..., Hkv, Tq, C] (bool, per KV head) restricts the sum and the scores to some clusters
    (the hierarchical second level)."""
    *lead, Hq, Tq, D = q.shape
    Hkv, C = centroids.shape[0], centroids.shape[1]
    G = Hq // Hkv
    qg = q.float().reshape(*lead, Hkv, G * Tq, D)                        # GQA without copying centroids
    logits = (qg @ centroids.float().transpose(-1, -2)).mul_(scale).view(*lead, Hkv, G, Tq, C)
    w = logits + counts.float().clamp_min(1e-30).log()[:, None, None, :]  # an empty cluster weighs ~0
    if allowed is not None:
        w = w.masked_fill(~allowed[..., None, :, :], float("-inf"))
    s = (logits - torch.logsumexp(w, -1, keepdim=True)).exp_()
    drop = (counts == 0)[:, None, None, :]
    if allowed is not None:
        drop = drop | ~allowed[..., None, :, :]
    return s.masked_fill_(drop, 0.0).reshape(*lead, Hq, Tq, C)


def group_mean(s: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[..., Hq, Tq, X] → [..., Hkv, Tq, X]: the mean over each KV head's G query heads."""
    *lead, Hq, Tq, X = s.shape
    return s.reshape(*lead, n_kv, Hq // n_kv, Tq, X).mean(-3)


def key_scores(cluster_s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-key scores [..., Hkv, Tq, N] from per-cluster scores [..., Hkv, Tq, C] (labels [Hkv, N])."""
    *lead, H, Tq, C = cluster_s.shape
    idx = labels[:, None, :].expand(H, Tq, -1).expand(*lead, H, Tq, -1)
    return cluster_s.gather(-1, idx)


def hierarchical_scores(q: torch.Tensor, index: ClusterIndex, scale: float, budget,
                        expand: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level lookup → (fine cluster scores [..., Hkv, Tq, C], 0 outside the kept coarse clusters;
    centroids compared per KV-head query [..., Hkv, Tq]: the C1 coarse ones + the fine ones looked at).

    Level 1 scores the C1 coarse centroids and keeps, per KV head and query, the best coarse
    clusters until they hold ≥ expand·budget keys; level 2 scores only the fine centroids under
    them (the denominator runs over those too). `budget`: an int, or a tensor with one per leading row."""
    if index.coarse is None:
        raise ValueError("this index has no coarse level: build_index(..., n_coarse=...)")
    n_kv = index.centroids.shape[0]
    need = torch.ceil(torch.as_tensor(budget, dtype=torch.float, device=q.device) * expand)
    s1 = group_mean(cluster_scores(q, index.coarse, index.coarse_counts, scale), n_kv)    # [..., Hkv, Tq, C1]
    keep1 = _top_by_count(s1, index.coarse_counts, need)                                 # [..., Hkv, Tq, C1]
    *lead, H, Tq, C1 = keep1.shape
    par = index.parent[:, None, :].expand(H, Tq, -1).expand(*lead, H, Tq, -1)
    allowed = keep1.gather(-1, par)                                                      # [..., Hkv, Tq, C]
    s2 = cluster_scores(q, index.centroids, index.counts, scale, allowed)
    return group_mean(s2, n_kv), C1 + allowed.sum(-1)


def _lead(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row value [r] (or a scalar) shaped to broadcast over [r, ...ndim more axes]."""
    return x.reshape(x.shape + (1,) * ndim) if x.dim() else x


def _top_by_count(s: torch.Tensor, counts: torch.Tensor, need) -> torch.Tensor:
    """Clusters in descending score order until their sizes sum to ≥ need: bool [..., H, Tq, C].
    `need`: a number or a tensor [r] for s [r, H, Tq, C]."""
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    *lead, H, Tq, C = s.shape
    sizes = counts[:, None, :].expand(H, Tq, -1).expand(*lead, H, Tq, -1).gather(-1, order)
    before = sizes.cumsum(-1) - sizes
    take = before < _lead(torch.as_tensor(need, device=s.device), 3)
    return torch.zeros_like(take).scatter(-1, order, take)


# ---- 4. choosing the kept keys ----------------------------------------------------------------


def topk_mask(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """bool mask of the `budget` highest scores along the last axis (ties broken arbitrarily)."""
    N = scores.shape[-1]
    budget = max(0, min(int(budget), N))
    if budget == N:
        return torch.ones_like(scores, dtype=torch.bool)
    if budget == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    idx = scores.float().topk(budget, -1, sorted=False).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, True)


def _take(base: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """base [H, X] read at idx [..., H, T, k] (head h reads row h): one flat index, no expanded gather."""
    H, X = base.shape
    return torch.take(base, idx + (torch.arange(H, device=idx.device) * X)[:, None, None])


def top_cluster_keys(cluster_s: torch.Tensor, index: ClusterIndex, budget: int) -> torch.Tensor:
    """The first `budget` keys of the clusters taken in descending score order (the last cluster cut
    at the budget, its keys in position order): key indices [..., Hkv, Tq, budget].

    O(C log C + budget) per query from the CSR layout (`order`, `offsets`), never O(N): the lookup a
    kernel would do. Same kept set as `topk_mask(key_scores(...), budget)` up to which keys of the
    last, partly kept cluster are chosen."""
    C = cluster_s.shape[-1]
    budget = min(int(budget), index.n_keys)
    rank = torch.sort(cluster_s, dim=-1, descending=True, stable=True).indices            # clusters by score
    sizes = _take(index.counts.long(), rank)
    ends = sizes.cumsum(-1)                                                              # [..., H, Tq, C]
    slot = torch.arange(budget, device=cluster_s.device).expand(*ends.shape[:-1], budget).contiguous()
    which = torch.searchsorted(ends, slot, right=True).clamp_max(C - 1)                  # rank position of each slot
    start_in_rank = (ends - sizes).gather(-1, which)
    cl = rank.gather(-1, which)                                                          # cluster id of each slot
    pos = _take(index.offsets[:, :-1], cl) + slot - start_in_rank                        # into `order`
    return _take(index.order, pos)


def indices_to_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(*idx.shape[:-1], n, dtype=torch.bool, device=idx.device).scatter(-1, idx, True)


def budget_mask(idx: torch.Tensor, n: int, budgets: torch.Tensor) -> torch.Tensor:
    """From ranked key indices idx [r, ..., b_max] (best first, distinct), keep the first budgets[r]
    of each row: bool [r, ..., n]."""
    valid = (torch.arange(idx.shape[-1], device=idx.device) < _lead(budgets.to(idx.device), idx.dim() - 1)).expand(idx.shape)
    return torch.zeros(*idx.shape[:-1], n, dtype=torch.bool, device=idx.device).scatter(-1, idx, valid)


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The q-quantile of `values` where each value counts `weights` times (flattened)."""
    v, w = values.flatten().double(), weights.flatten().double()
    o = v.argsort()
    cw = w[o].cumsum(0)
    i = torch.searchsorted(cw, torch.tensor([q * float(cw[-1])], dtype=cw.dtype, device=cw.device)).clamp_max(len(v) - 1)
    return float(v[o][i])


def calibrate_thresholds(indexes: list[ClusterIndex], queries: list[torch.Tensor], scale: float,
                         fractions) -> dict[float, float]:
    """The paper's global threshold τ_f per target fraction f, offline: over all layers, KV heads,
    calibration queries (queries[l]: [Hq, w, D], e.g. the fixed context's last w) and keys, the
    (1 − f) quantile of the key scores, so that on such queries a fraction f of keys has S > τ_f."""
    vals, wts = [], []
    for idx, q in zip(indexes, queries):
        s = group_mean(cluster_scores(q, idx.centroids, idx.counts, scale), idx.centroids.shape[0])  # [Hkv, w, C]
        vals.append(s.flatten().cpu())
        wts.append(idx.counts[:, None, :].expand_as(s).flatten().cpu())
    v, w = torch.cat(vals), torch.cat(wts)
    return {float(f): weighted_quantile(v, w, 1.0 - float(f)) for f in fractions}


# ---- 5. attention over the fixed context + the user input --------------------------------------

KINDS = ("dense", "none", "squeezed", "threshold", "hierarchical", "window", "random", "oracle")


@dataclass(frozen=True)
class Arm:
    """How one batch row reads the fixed context. kind: dense (every key) · none (no fixed key) ·
    squeezed (keys of the top clusters, exactly ⌈f·N⌉ per KV head and query) · threshold (the
    paper's global threshold τ: keys with S > τ, on average f) · hierarchical (two-level lookup, then
    ⌈f·N⌉ keys) · window (the first `sinks` keys + the most recent) · random (a fixed random subset
    per layer and head) · oracle (the ⌈f·N⌉ keys with the highest true attention: an upper bound)."""
    kind: str
    fraction: float = 1.0
    tau: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown arm kind {self.kind!r}; known: {KINDS}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.kind == "threshold" and self.tau is None:
            raise ValueError("a threshold arm needs tau (calibrate_thresholds)")

    @property
    def name(self) -> str:
        return arm_name(self.kind, self.fraction)


def arm_name(kind: str, fraction: float) -> str:
    """How results name an arm: "dense", "none", or "<kind>@<fraction>" (e.g. "squeezed@0.125")."""
    return kind if kind in ("dense", "none") else f"{kind}@{float(fraction):.3g}"


@dataclass
class FixedContext:
    """The offline state: per layer the fixed context's keys and values [Hkv, N, D] (RoPE'd at
    positions 0..N-1) and its ClusterIndex; `random` holds each layer's random rank of every key
    [Hkv, N] (a permutation of 0..N-1 per head: the random arm keeps ranks < budget)."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    index: list[ClusterIndex]
    random: list[torch.Tensor] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.keys[0].shape[1]


@dataclass
class FixedContextAttention:
    """A pattern for `patterns.apply`: batch row b reads the fixed context as `arms[b]` says.

    The HF cache holds only the user tokens (positions N, N+1, ...); the fixed keys come from `ctx`.
    `stats[layer]` accumulates, per row, the kept fraction of fixed keys, the dense attention mass
    on the fixed context the kept keys hold (recall), and the centroids compared per KV-head query.
    """
    ctx: FixedContext
    arms: list[Arm]
    sinks: int = 4
    expand: float = 2.0
    stats: dict = field(default_factory=dict)
    _cache: tuple | None = field(default=None, repr=False)

    def _plan(self, device) -> list[tuple]:
        """Per arm kind, built once: (kind, row list, rows [r], budgets [r], largest budget, taus [r])
        on the device, so the per-layer work never copies from the host (no GPU syncs)."""
        if self._cache is None or self._cache[0] != device:
            N = self.ctx.n
            kinds: dict[str, list[int]] = {}
            for b, a in enumerate(self.arms):
                kinds.setdefault(a.kind, []).append(b)
            plan = []
            for kind, rows in kinds.items():
                bud = [math.ceil(self.arms[b].fraction * N) for b in rows]
                tau = [self.arms[b].tau or 0.0 for b in rows]
                plan.append((kind, rows, torch.tensor(rows, device=device), torch.tensor(bud, device=device),
                             max(bud), torch.tensor(tau, device=device)))
            self._cache = (device, plan)
        return self._cache[1]

    def keep_masks(self, q: torch.Tensor, layer: int, scale: float, dense_p):
        """bool [B, Hkv, Tq, N] and centroids compared per row [B]; all rows of one kind at once.
        dense_p(rows) gives those rows' true attention probabilities on the fixed keys
        [r, Hkv, G, Tq, N] (only the oracle reads them)."""
        idx, N = self.ctx.index[layer], self.ctx.n
        B, Hq, Tq, _ = q.shape
        H = idx.centroids.shape[0]
        dev = q.device
        keep = torch.zeros(B, H, Tq, N, dtype=torch.bool, device=dev)
        comps = torch.zeros(B, device=dev)
        for kind, rows, r, bud, bmax, tau in self._plan(dev):
            if kind == "dense":
                keep[r] = True
            elif kind == "none":
                continue
            elif kind in ("squeezed", "threshold"):
                s = group_mean(cluster_scores(q[r], idx.centroids, idx.counts, scale), H)      # [r, Hkv, Tq, C]
                if kind == "threshold":
                    keep[r] = key_scores(s, idx.labels) > _lead(tau, 3)
                else:
                    keep[r] = budget_mask(top_cluster_keys(s, idx, bmax), N, bud)
                comps[r] = float(idx.n_clusters)
            elif kind == "hierarchical":
                s, nc = hierarchical_scores(q[r], idx, scale, bud, self.expand)
                keep[r] = budget_mask(top_cluster_keys(s, idx, bmax), N, bud)
                comps[r] = nc.float().mean((1, 2))
            elif kind == "window":                         # the first `sinks` keys + the most recent
                j = torch.arange(N, device=dev)
                sink = bud.clamp(max=self.sinks)
                keep[r] = ((j < _lead(sink, 1)) | (j >= _lead(N - (bud - sink), 1)))[:, None, None, :]
            elif kind == "random":                         # a fixed random ranking per layer and head
                keep[r] = (self.ctx.random[layer][None, :, None, :] < _lead(bud, 3))
            else:                                          # oracle: true attention, mean over the group
                p = dense_p(r).mean(2)
                keep[r] = budget_mask(p.topk(min(bmax, N), -1).indices, N, bud)
        return keep, comps

    def __call__(self, q, k, v, *, scale, layer):
        B, Hq, Tq, D = q.shape
        K0, V0 = self.ctx.keys[layer], self.ctx.values[layer]            # [Hkv, N, D]
        H, N, Tu = K0.shape[0], K0.shape[1], k.shape[2]
        G = Hq // H
        if len(self.arms) != B:
            raise ValueError(f"{len(self.arms)} arms for a batch of {B} rows")
        qg = (q.float() * scale).reshape(B, H, G * Tq, D)                 # GQA: a KV head's queries together
        # fixed keys: one exp pass over [B, Hkv, G·Tq, N]; softmax pieces kept as (max, sum) per query
        ef = qg @ K0.float().transpose(-1, -2)
        mf = ef.amax(-1, keepdim=True)
        ef = ef.sub_(mf).exp_()
        sf = ef.sum(-1, keepdim=True)                                     # dense mass (× e^mf)
        lu = qg @ k.float().transpose(-1, -2)                             # user keys, causal
        causal = torch.arange(Tu, device=q.device)[None, :] <= torch.arange(Tu - Tq, Tu, device=q.device)[:, None]
        lu = lu.view(B, H, G, Tq, Tu).masked_fill(~causal, float("-inf")).view(B, H, G * Tq, Tu)
        mu = lu.amax(-1, keepdim=True)
        eu = (lu - mu).exp_()
        su = eu.sum(-1, keepdim=True)
        M = torch.maximum(mf, mu)
        zd = sf * (mf - M).exp() + su * (mu - M).exp()                   # dense normaliser (× e^M)

        def dense_p(rows):
            return (ef[rows] * ((mf[rows] - M[rows]).exp() / zd[rows])).view(len(rows), H, G, Tq, N)

        keep, comps = self.keep_masks(q, layer, scale, dense_p)           # [B, Hkv, Tq, N]
        ef = ef.view(B, H, G, Tq, N).mul_(keep[:, :, None]).view(B, H, G * Tq, N)
        sk = ef.sum(-1, keepdim=True)
        z = sk * (mf - M).exp() + su * (mu - M).exp()
        out = (ef @ V0.float()) * ((mf - M).exp() / z) + (eu @ v.float()) * ((mu - M).exp() / z)
        # recall: the share of the dense attention mass on the fixed keys that the kept keys hold
        rec = (sk / sf).mean((1, 2, 3))
        st = self.stats.setdefault(layer, {"kept": [], "recall": [], "compared": [], "tokens": []})
        st["kept"].append(keep.float().mean((1, 2, 3)))                 # kept on the device: no sync per layer
        st["recall"].append(rec)
        st["compared"].append(comps)
        st["tokens"].append(Tq)
        return out.view(B, Hq, Tq, D).to(q.dtype)

    def summary(self) -> dict:
        """Per arm, token-weighted means over layers and calls: kept fraction, recall, centroids compared."""
        out = {}
        for key in ("kept", "recall", "compared"):
            num, den = 0.0, 0
            for st in self.stats.values():
                for x, t in zip(st[key], st["tokens"]):
                    num = num + x * t
                    den += t
            vals = (num / max(den, 1)).cpu().tolist() if den else [float("nan")] * len(self.arms)
            for a, val in zip(self.arms, vals):
                out.setdefault(a.name, {})[key] = float(val)
        return out


# ---- 6. the offline step on a real model -------------------------------------------------------


@torch.inference_mode()
def prepare(model, context_ids: torch.Tensor, *, cluster_frac: float = 0.05, coarse_frac: float | None = 0.125,
            iters: int = 25, seed: int = 0, obs_window: int = 64):
    """Prefill the fixed context ids [1, N] densely, cluster every layer's keys, and keep the last
    `obs_window` queries of each layer (for `calibrate_thresholds`). Returns (FixedContext,
    [queries [Hq, w, D] per layer], last-position logits [V])."""
    from . import patterns as pt
    kept_q: dict[int, torch.Tensor] = {}

    class Capture(pt.Dense):
        def __call__(self, q, k, v, *, scale, layer):
            kept_q[layer] = q[0, :, -obs_window:].detach()
            return super().__call__(q, k, v, scale=scale, layer=layer)

    with pt.apply(model, Capture()):
        out = model(input_ids=context_ids, use_cache=True, logits_to_keep=1)
    N = context_ids.shape[1]
    C = max(1, round(cluster_frac * N))
    C1 = max(1, round(coarse_frac * C)) if coarse_frac else None
    layers = out.past_key_values.layers
    keys = [layer.keys[0].float() for layer in layers]                   # [Hkv, N, D] per layer, fp32
    values = [layer.values[0].float() for layer in layers]
    H = keys[0].shape[0]
    every = build_index(torch.cat(keys), C, n_coarse=C1, iters=iters, seed=int(seed))   # all heads at once
    index = [slice_index(every, slice(li * H, (li + 1) * H)) for li in range(len(layers))]
    g = torch.Generator().manual_seed(int(seed) + 7)
    rnd = [torch.rand(H, N, generator=g).argsort(-1).to(keys[0].device) for _ in layers]   # a random rank per key
    return FixedContext(keys, values, index, rnd), [kept_q[i] for i in sorted(kept_q)], out.logits[0, -1].float()


# ---- 7. the decode-time gather path (what a GPU timing measures) --------------------------------


def gathered_decode_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, index: ClusterIndex,
                              budget: int, scale: float) -> torch.Tensor:
    """One decode step over a fixed context: q [Hq, D], K, V [Hkv, N, D] → out [Hq, D].

    Centroid lookup (C comparisons per head), the best clusters' keys up to `budget` from the CSR
    layout, a gather of only those keys and values, exact softmax attention over them."""
    H = K.shape[0]
    s = group_mean(cluster_scores(q[:, None], index.centroids, index.counts, scale), H)   # [Hkv, 1, C]
    idx = top_cluster_keys(s, index, budget)[:, 0]                                         # [Hkv, budget]
    flat = (idx + torch.arange(H, device=K.device)[:, None] * K.shape[1]).reshape(-1)   # whole rows: index_select
    D = K.shape[-1]
    k = K.reshape(-1, D).index_select(0, flat).view(H, -1, D)
    v = V.reshape(-1, D).index_select(0, flat).view(H, -1, D)
    return dense_decode_attention(q, k, v, scale)


def dense_decode_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale: float) -> torch.Tensor:
    """One decode step over keys/values [Hkv, n, D] with SDPA: q [Hq, D] → [Hq, D]. GQA without
    copying K/V: each KV head's G query heads become G query rows of that head."""
    Hq, D = q.shape
    H = K.shape[0]
    out = torch.nn.functional.scaled_dot_product_attention(q.reshape(1, H, Hq // H, D), K[None], V[None], scale=scale)
    return out.reshape(Hq, D)
