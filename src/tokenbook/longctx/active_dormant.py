"""Active-dormant attention heads and extreme tokens (Guo et al., arXiv:2410.13835), in miniature.

Three parts:

1. **The Bigram-Backcopy (BB) task.** A vocabulary of V ordinary tokens plus a BOS token (id V),
   a random bigram transition matrix P (rows drawn from a Dirichlet), and a few *trigger* tokens.
   A sequence starts with BOS and a non-trigger token drawn uniformly; then, for t >= 2,

       x_t = x_{t-2}                    if x_{t-1} is a trigger   (back-copy)
       x_t ~ P[x_{t-1}, :]              otherwise                 (bigram)

   The first token is never a trigger, so two triggers are never adjacent and the copy is always
   defined. The best possible loss is 0 after a trigger and the entropy of P[x_{t-1}] elsewhere.
   A head that copies must attend to x_{t-2} after a trigger (it is *active*) and has nothing to do
   after other tokens: the paper finds it then parks its attention on BOS (*dormant*, an attention
   sink), with a small value state at BOS (a value-state drain) and, in deeper models, a large
   BOS residual norm (a residual-state peak).

2. **A tiny transformer with a pluggable attention normaliser** (`TinyLM`): learned absolute
   positions, pre-LayerNorm blocks (attention + GELU MLP), untied unembedding.
   `normaliser="softmax"` is ordinary attention; `"relu"` replaces softmax(s) by ReLU(s) / n_i,
   where n_i is the number of keys query i may see (weights need not sum to 1, so a head can go
   quiet by giving zero weight everywhere instead of sinking onto BOS).

3. **Probes** on a forward pass (`TinyLM.forward(..., probes=True)`): per layer the attention
   weights [B, H, T, T], value states [B, H, T, Dh] and block outputs [B, T, d]; and the three
   extreme-token statistics per sequence: `bos_share` (the share of a query's attention weight
   that lands on BOS, over a set of query positions), `value_ratio` (‖v_BOS‖ / mean_j≥1 ‖v_j‖)
   and `residual_ratio` (‖h_BOS‖ / mean_j≥1 ‖h_j‖).

Also `bos_mass_per_head` for a real Llama-family model (SmolLM2), through the shared hooks of
`tokenbook.longctx.selection`. Shapes: B batch, T positions (BOS included), H heads, Dh head dim,
d model width, V ordinary vocabulary. Book chapter: `active-dormant`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NORMALISERS = ("softmax", "relu")


# ---- 1. the Bigram-Backcopy task --------------------------------------------------------------

@dataclass(frozen=True)
class BBTask:
    P: np.ndarray            # [V, V] bigram transition matrix (rows sum to 1)
    triggers: tuple[int, ...]

    @property
    def V(self) -> int:
        return int(self.P.shape[0])

    @property
    def bos(self) -> int:
        return self.V


def make_task(V: int = 64, n_triggers: int = 3, alpha: float = 0.5, seed: int = 0) -> BBTask:
    """A random BB task: Dirichlet(alpha) rows; triggers chosen at random among the V tokens."""
    if V < 4 or not 1 <= n_triggers < V // 2:
        raise ValueError(f"need V >= 4 and 1 <= n_triggers < V/2, got V={V}, n_triggers={n_triggers}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng([seed, 37])
    P = rng.dirichlet(np.full(V, float(alpha)), size=V)
    trig = tuple(sorted(int(t) for t in rng.choice(V, n_triggers, replace=False)))
    return BBTask(P, trig)


def sample(task: BBTask, n: int, T: int, rng: np.random.Generator) -> torch.Tensor:
    """n sequences of T tokens after BOS: a LongTensor [n, T + 1] whose column 0 is BOS."""
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    V, trig = task.V, np.array(task.triggers)
    is_trig = np.zeros(V, bool)
    is_trig[trig] = True
    cdf = np.cumsum(task.P, axis=1)
    cdf[:, -1] = 1.0
    x = np.empty((n, T + 1), np.int64)
    x[:, 0] = task.bos
    x[:, 1] = rng.choice(np.flatnonzero(~is_trig), n)
    u = rng.random((n, T + 1))
    for t in range(2, T + 1):
        prev = x[:, t - 1]
        drawn = (u[:, t, None] > cdf[prev]).sum(1)
        x[:, t] = np.where(is_trig[prev], x[:, t - 2], np.minimum(drawn, V - 1))
    return torch.from_numpy(x)


def position_kinds(task: BBTask, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks over query positions [B, T+1]: whose *current* token is a trigger (the next
    token is a copy) or an ordinary token (the next token is a bigram draw). BOS is in neither."""
    trig = torch.zeros(task.V + 1, dtype=torch.bool)
    trig[list(task.triggers)] = True
    t = trig[x]
    ordinary = ~t & (x != task.bos)
    return {"trigger": t, "non_trigger": ordinary}


def bigram_entropy(task: BBTask) -> np.ndarray:
    """H(P[v, :]) in nats for every token v: the best loss on a bigram position after v."""
    P = np.clip(task.P, 1e-300, 1)
    return -(task.P * np.log(P)).sum(1)


# ---- 2. the tiny transformer ------------------------------------------------------------------

def normalise(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Causal attention weights from raw scores [..., T, T] (query i sees keys j <= i).

    softmax: the usual row softmax. relu: ReLU(s_ij) / (i + 1), zero above the diagonal."""
    T = scores.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    if kind == "softmax":
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)
    if kind == "relu":
        n = torch.arange(1, T + 1, device=scores.device, dtype=scores.dtype)[:, None]
        return F.relu(scores).masked_fill(~mask, 0.0) / n
    raise ValueError(f"unknown attention normaliser {kind!r}; valid: {NORMALISERS}")


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, normaliser: str, mlp: bool = True):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
        if normaliser not in NORMALISERS:
            raise ValueError(f"unknown attention normaliser {normaliser!r}; valid: {NORMALISERS}")
        self.h, self.dh, self.normaliser = n_heads, d // n_heads, normaliser
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) if mlp else None

    def forward(self, x: torch.Tensor):
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        a = normalise(q @ k.transpose(-1, -2) / math.sqrt(self.dh), self.normaliser)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(B, T, d))
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x, a, v


class TinyLM(nn.Module):
    """Embedding + learned positions → L pre-LN blocks → LayerNorm → unembedding (V+1 ids in, V out)."""

    def __init__(self, V: int, T: int, d: int = 64, n_layers: int = 1, n_heads: int = 1,
                 normaliser: str = "softmax", mlp: bool = True):
        super().__init__()
        self.emb, self.pos = nn.Embedding(V + 1, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(Block(d, n_heads, normaliser, mlp) for _ in range(n_layers))
        self.ln, self.out = nn.LayerNorm(d), nn.Linear(d, V)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, probes: bool = False):
        h = self.emb(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        rec = {"attn": [], "values": [], "residual": []}
        for blk in self.blocks:
            h, a, v = blk(h)
            if probes:
                rec["attn"].append(a)
                rec["values"].append(v)
                rec["residual"].append(h)
        logits = self.out(self.ln(h))
        return (logits, rec) if probes else logits


def bb_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: positions 0..T-1 predict tokens 1..T (BOS is never a target)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9):
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimiser {name!r}; valid: adam, sgd")


# ---- 3. probes --------------------------------------------------------------------------------

def bos_share(attn: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Per sequence and head: mean over the selected queries of (weight on BOS) / (total weight).

    attn [B, H, T, T]; queries [B, T] bool. A query whose weights are all zero (possible with ReLU
    attention) puts 0 on BOS. Sequences without a selected query give NaN. Returns [B, H]."""
    tot = attn.sum(-1)
    share = torch.where(tot > 0, attn[..., 0] / tot.clamp_min(1e-30), torch.zeros_like(tot))  # [B, H, T]
    q = queries[:, None, :].to(share.dtype)
    return (share * q).sum(-1) / q.sum(-1)


def norm_ratio(states: torch.Tensor) -> torch.Tensor:
    """‖s_0‖ / mean_{j>=1} ‖s_j‖ over the position axis (-2): [B, H, T, Dh] → [B, H]; [B, T, d] → [B]."""
    n = states.norm(dim=-1)
    return n[..., 0] / n[..., 1:].mean(-1)


@torch.no_grad()
def probe(model: TinyLM, task: BBTask, x: torch.Tensor) -> dict:
    """Extreme-token statistics of every layer and head on sequences x [B, T+1] (numpy arrays):
    bos_non_trigger / bos_trigger [L, B, H], value_ratio [L, B, H], residual_ratio [L, B];
    plus the task metrics per sequence: correct copies and trigger positions, bigram loss and its floor."""
    model.eval()
    dev = next(model.parameters()).device
    x = x.to(dev)
    npy = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    logits, rec = model(x, probes=True)
    kinds = {k: m.to(dev) for k, m in position_kinds(task, x.cpu()).items()}
    # queries at the last position have no target, but they still have attention; keep all but BOS
    out = {"bos_non_trigger": np.stack([npy(bos_share(a, kinds["non_trigger"])) for a in rec["attn"]]),
           "bos_trigger": np.stack([npy(bos_share(a, kinds["trigger"])) for a in rec["attn"]]),
           "value_ratio": np.stack([npy(norm_ratio(v)) for v in rec["values"]]),
           "residual_ratio": np.stack([npy(norm_ratio(h)) for h in rec["residual"]])}
    trig, ordn = kinds["trigger"][:, :-1], kinds["non_trigger"][:, :-1]
    pred, nxt = logits[:, :-1].argmax(-1), x[:, 1:]
    out["copy_correct"] = npy((pred == nxt) & trig).sum(1)
    out["copy_positions"] = npy(trig).sum(1)         # a sequence may hold no trigger: pool, don't average
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), nxt, reduction="none")
    H = torch.from_numpy(bigram_entropy(task)).float().to(dev)
    prev = x[:, :-1].clamp_max(task.V - 1)
    cnt = ordn.sum(1).clamp_min(1)
    out["bigram_loss"] = npy((nll * ordn).sum(1) / cnt)
    out["bigram_floor"] = npy((H[prev] * ordn).sum(1) / cnt)
    return out


def select_head(stats: dict) -> tuple[int, int]:
    """The (layer, head) whose BOS share differs most between non-trigger and trigger queries
    (the most active-dormant head), from `probe` output on selection sequences."""
    gap = np.nanmean(stats["bos_non_trigger"] - stats["bos_trigger"], axis=1)   # [L, H]
    layer, head = np.unravel_index(int(np.nanargmax(gap)), gap.shape)
    return int(layer), int(head)


def train_arm(task: BBTask, *, normaliser: str, optimiser: str, lr: float, steps: int, batch: int, T: int,
              d: int, n_layers: int, n_heads: int, seed: int, probe_x: torch.Tensor, probe_every: int,
              momentum: float = 0.9, grad_clip: float = 1.0, device: str = "cpu", progress: bool = True) -> dict:
    """Train one arm on fresh BB batches; probe a fixed batch every `probe_every` steps.

    Every arm sees the same data stream (the batch generator is seeded by `seed` alone) and the
    same number of steps; only the normaliser, optimiser and learning rate differ."""
    from tqdm import tqdm
    torch.manual_seed(seed)
    model = TinyLM(task.V, T + 1, d, n_layers, n_heads, normaliser).to(device)
    opt = make_optimizer(model, optimiser, lr, momentum)
    rng = np.random.default_rng([seed, 1])
    curve, losses = [], []
    bar = tqdm(range(steps + 1), desc=f"{normaliser}+{optimiser}", disable=not progress, mininterval=2)
    for step in bar:
        if step % probe_every == 0 or step == steps:
            s = probe(model, task, probe_x)
            L, H = s["bos_non_trigger"].shape[0], s["bos_non_trigger"].shape[2]
            curve.append({"step": step,
                          "bos_non_trigger": np.nanmean(s["bos_non_trigger"], 1).reshape(L, H).tolist(),
                          "bos_trigger": np.nanmean(s["bos_trigger"], 1).reshape(L, H).tolist(),
                          "value_ratio": np.nanmean(s["value_ratio"], 1).tolist(),
                          "residual_ratio": np.nanmean(s["residual_ratio"], 1).tolist(),
                          "copy_accuracy": float(s["copy_correct"].sum() / max(s["copy_positions"].sum(), 1)),
                          "bigram_excess": float(np.mean(s["bigram_loss"] - s["bigram_floor"]))})
        if step == steps:
            break
        model.train()
        x = sample(task, batch, T, rng).to(device)
        loss = bb_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return {"model": model.cpu().eval(), "curve": curve, "losses": losses}


# ---- a real LLM: BOS attention share per head -------------------------------------------------

@torch.inference_mode()
def bos_mass_per_head(model, ids: torch.Tensor, skip: int = 4) -> np.ndarray:
    """Mean share of attention on position 0, per layer and query head [L, Hq], of a Llama-family
    model on one sequence ids [1, T]; queries at positions >= `skip` (the first few queries have
    little else to attend to). Attention is recomputed from the hooked queries/keys (exact softmax
    with a causal mask), so the model's own attention backend is left untouched."""
    from . import selection as sel
    rows = {}

    def on_capture(i, attn, inp):
        q, k = sel.project_qk(attn, inp.hidden_states, inp.position_embeddings)
        k = sel.repeat_kv(k, q.shape[1] // k.shape[1])
        s = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling
        a = normalise(s, "softmax")[0]                           # [Hq, T, T]
        rows[i] = a[:, skip:, 0].mean(-1).cpu().numpy()
        return False

    with sel.capture_attention_inputs(model, on_capture=on_capture):
        model.model(input_ids=ids, use_cache=False)
    return np.stack([rows[i] for i in sorted(rows)])
