"""MInference 1.0 (Jiang et al., NeurIPS 2024, arXiv:2407.02490): dynamic sparse attention for prefill.

Long-context attention heads fall into three shapes, and MInference gives every head one of them:

    A-shape:         the first tokens (sinks) plus a local window — static, no estimate needed;
    vertical-slash:  a few key columns every later query reads, plus a few diagonals; which ones
                     is estimated *online* from the attention of the last `n_last` queries;
    block-sparse:    the top-k key blocks per query block, from mean-pooled Q·K block scores.

**Offline search** (`search`): run the model densely on calibration prompts, build each pattern's
layout for every head under a fixed budget, and score it by *recall* — the share of dense
attention mass its token mask keeps, averaged over query rows sampled along the whole sequence.
Each head takes the pattern with the best recall among those under `max_density` (the fraction of
causally valid 64×64 blocks computed — the FLOPs budget). **Online** (`sparse_pattern`): at prefill,
each layer builds the chosen heads' layouts from its own Q and K and runs
`tokenbook.kernels.block_sparse_attention` through `patterns.BlockSparse`. Layout building uses the
shared helpers in `tokenbook.longctx.patterns` and `tokenbook.kernels.sparse_layouts`.

Shapes: B batch (1 here), Hq / Hkv query / key-value heads, T tokens, D head dim, R sampled query
rows, P patterns, L layers, nq / nk query / key blocks, bs block size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import sparse_layouts as sl
from . import patterns as pt

PATTERNS = ("a_shape", "vertical_slash", "block_sparse")
LABEL = {"dense": "dense (SDPA)", "minference": "MInference (searched per head)",
         "a_shape": "A-shape on every head (StreamingLLM)"}
PATTERN_LABEL = {"a_shape": "A-shape", "vertical_slash": "vertical-slash", "block_sparse": "block-sparse"}


@dataclass(frozen=True)
class Budget:
    """The per-pattern sizes (tokens unless said otherwise), fixed across lengths as in the paper,
    so density falls as the context grows."""
    block_size: int = 64
    sinks: int = 64            # A-shape: first tokens kept
    window: int = 256          # A-shape: local window
    n_last: int = 64           # vertical-slash: queries the online estimate reads
    n_vertical: int = 64       # vertical-slash: key columns kept
    n_slash: int = 128         # vertical-slash: diagonals kept (the first n_last forced: the local band)
    topk: int = 4              # block-sparse: key blocks per query block (+ the diagonal and one sink block)


def candidate_layouts(q: torch.Tensor, k: torch.Tensor, b: Budget, names=PATTERNS) -> dict[str, torch.Tensor]:
    """Layouts ``[B, Hq, nq, nk]`` of each pattern, built from this layer's q ``[B, Hq, T, D]`` and k
    ``[B, Hkv, T, D]`` exactly as the online step builds them (prefill: queries = keys)."""
    B, Hq, T, _ = q.shape
    bs = b.block_size
    nb = -(-T // bs)
    out = {}
    for name in names:
        if name == "a_shape":
            lay = sl.lambda_layout(nb, nb, -(-b.sinks // bs), -(-b.window // bs), device=q.device)
        elif name == "vertical_slash":
            probs = pt.last_query_attention(q, k, min(b.n_last, T))
            v_idx, s_idx = pt.vertical_slash_indices(probs, b.n_vertical, b.n_slash, n_last_forced=min(b.n_last, T))
            lay = sl.vertical_slash_layout(v_idx, s_idx, T, T, bs)
        elif name == "block_sparse":
            lay = sl.topk_layout(sl.pooled_block_scores(q, k, bs), b.topk, sink_blocks=1)
        else:
            raise ValueError(f"unknown pattern {name!r}; known: {PATTERNS}")
        out[name] = lay.expand(B, Hq, nb, nb)
    return out


def sample_rows(T: int, n_rows: int, seed: int = 0) -> torch.Tensor:
    """`n_rows` query positions spread over the sequence (stratified, one random row per stratum);
    the search judges a layout on the whole sequence, not only on the rows it was estimated from."""
    n_rows = min(n_rows, T)
    g = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, T, n_rows + 1)
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    return (lo + torch.rand(n_rows, generator=g) * width).long().clamp(max=T - 1)


def row_probs(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal attention probabilities ``[B, Hq, R, T]`` (fp32) of the query rows `rows` (prefill)."""
    Hq, D = q.shape[1], q.shape[-1]
    T = k.shape[2]
    scale = scale or 1.0 / math.sqrt(D)
    rows = rows.to(q.device)
    kk = k.float().repeat_interleave(Hq // k.shape[1], 1)
    sc = q[:, :, rows].float() @ kk.transpose(-1, -2) * scale
    sc = sc.masked_fill(torch.arange(T, device=q.device)[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(sc, -1)


def recall(probs: torch.Tensor, rows: torch.Tensor, layout: torch.Tensor, block_size: int) -> torch.Tensor:
    """Share ``[B, Hq]`` of the rows' attention mass (``probs [B, Hq, R, T]``) inside a layout's blocks."""
    T = probs.shape[-1]
    blk = layout[:, :, rows.to(layout.device) // block_size, :]                 # [B, Hq, R, nk]
    tok = blk.repeat_interleave(block_size, -1)[..., :T]
    return (probs * tok).sum(-1).mean(-1)


def head_density(layout: torch.Tensor) -> torch.Tensor:
    """Fraction ``[B, Hq]`` of causally valid blocks each head's layout keeps (its share of dense FLOPs)."""
    nq, nk = layout.shape[-2:]
    valid = sl.causal_block_mask(nq, nk, layout.device)
    return (layout & valid).sum((-1, -2)).float() / valid.sum()


def score_layer(q, k, b: Budget, rows: torch.Tensor, names=PATTERNS) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall and density ``[P, Hq]`` of each pattern on one layer (batch of one)."""
    probs = row_probs(q, k, rows)
    lays = candidate_layouts(q, k, b, names)
    rec = torch.stack([recall(probs, rows, lays[n], b.block_size)[0] for n in names])
    den = torch.stack([head_density(lays[n])[0] for n in names])
    return rec.cpu(), den.cpu()


def choose(rec: torch.Tensor, den: torch.Tensor, max_density: float) -> torch.Tensor:
    """Per head the pattern index ``[Hq]``: the best recall among patterns with density ≤ max_density
    (ties: the sparser one); a head where none fits takes the sparsest pattern."""
    fits = den <= max_density + 1e-9
    key = torch.where(fits, rec - 1e-6 * den, rec.new_full(rec.shape, -math.inf))
    best = key.argmax(0)
    return torch.where(fits.any(0), best, den.argmin(0))


@dataclass
class Plan:
    """The offline search's result: `choice [L, Hq]` indexes PATTERNS; `recall` and `density`
    ``[L, P, Hq]`` are the calibration scores it was chosen from."""
    choice: torch.Tensor
    recall: torch.Tensor
    density: torch.Tensor

    def names(self) -> list[list[str]]:
        return [[PATTERNS[i] for i in row] for row in self.choice.tolist()]

    def counts(self) -> dict[str, int]:
        return {p: int((self.choice == i).sum()) for i, p in enumerate(PATTERNS)}


def scores(model, ids: torch.Tensor, b: Budget, n_rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall and density ``[L, P, Hq]`` of every pattern on every head for one sequence ``ids [T]``."""
    qk = pt.capture_qk(model, ids.view(1, -1))
    rows = sample_rows(ids.numel(), n_rows, seed)
    per = [score_layer(*qk[layer], b, rows) for layer in sorted(qk)]
    return torch.stack([r for r, _ in per]), torch.stack([d for _, d in per])


def search(model, calib: list[torch.Tensor], b: Budget, *, n_rows: int, max_density: float) -> Plan:
    """Offline per-head pattern search on calibration sequences (scores averaged over them)."""
    got = [scores(model, ids, b, n_rows, seed=i) for i, ids in enumerate(calib)]
    rec = torch.stack([r for r, _ in got]).mean(0)
    den = torch.stack([d for _, d in got]).mean(0)
    return Plan(torch.stack([choose(rec[layer], den[layer], max_density) for layer in range(rec.shape[0])]), rec, den)


def uniform_plan(name: str, n_layers: int, n_heads: int) -> Plan:
    """Every head on one pattern (e.g. A-shape everywhere = StreamingLLM-style static sparsity)."""
    z = torch.zeros(n_layers, len(PATTERNS), n_heads)
    return Plan(torch.full((n_layers, n_heads), PATTERNS.index(name)), z, z)


def plan_layouts(plan: Plan, b: Budget):
    """The online step for `patterns.BlockSparse`: (q, k, layer) -> layout ``[B, Hq, nq, nk]`` where each
    head gets its searched pattern, built from the live q and k (only the patterns this layer uses)."""
    def layouts(q, k, layer):
        ch = plan.choice[layer].to(q.device)
        used = [PATTERNS[i] for i in sorted(set(ch.tolist()))]
        lays = candidate_layouts(q, k, b, used)
        out = None
        for n in used:
            pick = (ch == PATTERNS.index(n))[None, :, None, None]
            out = lays[n] & pick if out is None else out | (lays[n] & pick)
        return out
    return layouts


def sparse_pattern(plan: Plan, b: Budget, backend: str = "auto") -> pt.BlockSparse:
    """The MInference prefill pattern for `patterns.apply` (its `.stats` collects layout densities)."""
    return pt.BlockSparse(layouts=plan_layouts(plan, b), block_size=b.block_size, backend=backend)


def chosen(values: torch.Tensor, plan: Plan) -> torch.Tensor:
    """From ``[L, P, Hq]`` scores, each head's value under its chosen pattern ``[L, Hq]``."""
    return values.gather(1, plan.choice[:, None, :]).squeeze(1)


def answer_scores(model, prompt: torch.Tensor, answer: list[int], pattern) -> tuple[bool, float]:
    """Sparse prefill of ``prompt [T]`` under `pattern`, then the answer teacher-forced with dense
    attention from the KV cache (MInference only changes prefill). Returns (greedy would produce
    the whole answer, mean NLL of the answer tokens in nats)."""
    ids = prompt.view(1, -1)
    ans = torch.tensor(answer, device=ids.device).view(1, -1)
    with torch.inference_mode():
        with pt.apply(model, pattern):
            out = model(input_ids=ids, use_cache=True)
        logits = [out.logits[0, -1:].float()]
        if ans.shape[1] > 1:
            with pt.apply(model, pt.Dense()):
                logits.append(model(input_ids=ans[:, :-1], past_key_values=out.past_key_values,
                                    use_cache=True).logits[0].float())
    lg = torch.cat(logits)
    lp = torch.log_softmax(lg, -1).gather(-1, ans[0, :, None])[:, 0]
    return bool((lg.argmax(-1) == ans[0]).all()), float(-lp.mean())


def layer_density_summary(stats: list) -> float:
    """Mean layout density over the (layer, density) pairs a BlockSparse pattern recorded."""
    return float(np.mean([d for _, d in stats])) if stats else float("nan")
