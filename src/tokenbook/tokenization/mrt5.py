r"""MrT5 (arXiv:2410.20771): a byte-level encoder–decoder whose encoder deletes tokens with a learned gate.

After the first `l` encoder layers, a *delete gate* scores every byte position $i$:

$$G_i = k\,\sigma\big(g\,(\mathrm{LN}(h_i)\cdot w + b)\big) \in (k, 0),\qquad k = -30,$$

($g$ is a fixed gain, our addition so that a few hundred Adam steps can move the gate; the paper has
$g = 1$). $G_i \approx k$ means "delete", $G_i \approx 0$ "keep".

- **Training (soft deletion)**: $G$ is added to the attention logits of every key $i$ in the later
  encoder layers and in the decoder's cross-attention, so a gated key gets weight $\approx e^{-30}$
  and gradients reach $w, b$ through the loss. Attention uses $\mathrm{softmax}_1$ (an extra logit 0
  with value 0 in the denominator), as the paper does, so a query may attend to "nothing".
- **Inference (hard deletion)**: positions with $G_i < k/2$ are removed; layers $> l$ and the
  cross-attention run on the shorter sequence, the kept keys still biased by their $G_i$. With the
  deleted keys' logits at $-\infty$ the two are the same computation (`tests/test_mrt5.py`
  checks it); at $G_i < k/2$ they differ by weights below $e^{5 - 15}$.
- **Bounded attention logits**: the paper's code penalizes attention logits above 5 in the layers
  the gate acts on, because a model can otherwise raise the logits of the keys it needs by 30 and
  undo soft deletion. We bound them exactly instead: $s \mapsto 5\tanh(s/5)$ in every encoder
  layer and the cross-attention, in every arm and in stage 1 (a penalty averaged over all logits
  did not stop our copy-heavy model from raising the few logits it needs).
- **Regularizer**: loss $= \mathrm{CE} + \alpha\,\overline{G}$ (mean over non-pad positions) pushes
  gates toward deletion; $\alpha$ is steered each step by a PI controller toward a target deletion
  ratio $\delta$: $e_t = \delta - \hat\delta_t$, $p_t = \gamma p_{t-1} + (1-\gamma) e_t$,
  $i_t = i_{t-1} + e_t$, $\alpha_t = \max(0, k_p p_t + k_i i_t)$.

Baselines delete at the same place with no learning: `random_keep` (exactly round(δT) positions per
sequence, uniformly) and `stride_keep` (evenly spaced kept positions: δ=0.5 keeps every 2nd byte).

Objectives on real text: `span` is ByT5's span corruption (spans of bytes, mean length `mean_span`,
`noise_density` of the bytes, are replaced by one sentinel id each; the decoder writes sentinel,
span bytes, sentinel, ..., eos); `denoise` masks the same spans byte by byte (the input keeps its
length) and the decoder writes the whole original window. Byte ids follow
`tokenbook.train.ByteTokenizer` (0 pad, 1 bos, 2 eos, byte b → b+3); sentinels are 259, 260, ...
(`denoise` uses 259 as its mask id).

Shapes: B batch, T encoder length, S decoder length, D model width, H heads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
SENTINEL0 = 256 + OFFSET     # first sentinel id


# --- data: byte span corruption ------------------------------------------------------------------

def span_lengths(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise bytes, number of spans) for a window of `length` bytes (T5's rounding)."""
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span < 1:
        raise ValueError(f"mean_span must be >= 1, got {mean_span}")
    n_noise = min(max(1, round(length * noise_density)), length - 1)
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, length - n_noise))
    return n_noise, n_spans


def _segment(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n items cut into k non-empty segments at random (k-1 distinct cut points)."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [n]]))


def span_corrupt(window: np.ndarray, rng: np.random.Generator, noise_density: float = 0.15,
                 mean_span: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """One byte window (ids) → (encoder ids, target ids); both end with eos. Lengths depend only on
    len(window): T = L - noise + spans + 1 and S = noise + spans + 1."""
    L = len(window)
    n_noise, n_spans = span_lengths(L, noise_density, mean_span)
    noise = _segment(n_noise, n_spans, rng)
    keep = _segment(L - n_noise, n_spans, rng)
    enc, tgt, pos = [], [], 0
    for j in range(n_spans):
        enc.append(window[pos:pos + keep[j]])
        pos += keep[j]
        enc.append([SENTINEL0 + j])
        tgt.append([SENTINEL0 + j])
        tgt.append(window[pos:pos + noise[j]])
        pos += noise[j]
    enc.append([EOS])
    tgt.append([EOS])
    return np.concatenate(enc).astype(np.int64), np.concatenate(tgt).astype(np.int64)


def mask_corrupt(window: np.ndarray, rng: np.random.Generator, noise_density: float = 0.15,
                 mean_span: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Length-preserving denoising: the same random spans as `span_corrupt`, but every masked byte
    becomes the mask id (SENTINEL0) and the target is the whole original window (+ eos)."""
    L = len(window)
    n_noise, n_spans = span_lengths(L, noise_density, mean_span)
    noise = _segment(n_noise, n_spans, rng)
    keep = _segment(L - n_noise, n_spans, rng)
    enc, pos = np.array(window, dtype=np.int64), 0
    for j in range(n_spans):
        pos += keep[j]
        enc[pos:pos + noise[j]] = SENTINEL0
        pos += noise[j]
    return np.append(enc, EOS), np.append(np.asarray(window, dtype=np.int64), EOS)


OBJECTIVES = {"span": span_corrupt, "denoise": mask_corrupt}


def corrupt_batch(windows: np.ndarray, rng: np.random.Generator, noise_density: float,
                  mean_span: float, objective: str = "span") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] byte windows → encoder ids [B, T], target ids [B, S] (no padding: lengths are fixed).
    objective "span": T5 span corruption; "denoise": length-preserving masking, full target."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    pairs = [OBJECTIVES[objective](w, rng, noise_density, mean_span) for w in np.asarray(windows)]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))


def byte_ids(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + OFFSET


def id_label(i: int) -> str:
    """A printable label for one id: the character for ASCII bytes, ⟨sN⟩ for sentinels."""
    i = int(i)
    if i >= SENTINEL0:
        return f"⟨s{i - SENTINEL0}⟩"
    if i < OFFSET:
        return ("⟨pad⟩", "⟨bos⟩", "⟨eos⟩")[i]
    b = i - OFFSET
    if b == 10:
        return "↵"
    return chr(b) if 32 <= b < 127 else f"\\x{b:02x}"


# --- deletion masks for the baselines --------------------------------------------------------------

def n_deleted(T: int, ratio: float) -> int:
    if not 0 <= ratio < 1:
        raise ValueError(f"deletion ratio must be in [0, 1), got {ratio}")
    return min(int(round(ratio * T)), T - 1)


def random_keep(B: int, T: int, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """[B, T] bool: exactly round(ratio*T) positions per row deleted, uniformly at random."""
    d = n_deleted(T, ratio)
    keep = np.ones((B, T), bool)
    for b in range(B):
        keep[b, rng.choice(T, size=d, replace=False)] = False
    return torch.from_numpy(keep)


def stride_keep(B: int, T: int, ratio: float) -> torch.Tensor:
    """[B, T] bool: m = T - round(ratio*T) kept positions, evenly spaced (floor(j*T/m), j < m)."""
    m = T - n_deleted(T, ratio)
    keep = torch.zeros(T, dtype=torch.bool)
    keep[(torch.arange(m) * T) // m] = True
    return keep.expand(B, T).clone()


# --- the model ----------------------------------------------------------------------------------------

@dataclass
class MrT5Config:
    vocab_size: int = SENTINEL0 + 16
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    enc_layers: int = 6
    dec_layers: int = 2
    gate_layer: int = 2          # the gate runs after this many encoder layers (the paper: 3 of 12)
    max_enc_len: int = 512
    max_dec_len: int = 128
    gate_scale: float = -30.0    # k
    gate_gain: float = 10.0      # g (see the module docstring)
    gate_init: float = -4.0      # initial g*b: every gate starts near 0 ("keep")
    threshold: float | None = None   # hard deletion below this gate value; None: k/2
    softmax1: bool = True
    logit_cap: float | None = 5.0    # soft cap on encoder and cross-attention logits (None: off)

    def __post_init__(self):
        if not 0 < self.gate_layer < self.enc_layers:
            raise ValueError(f"gate_layer must be in 1..enc_layers-1 = 1..{self.enc_layers - 1}, got {self.gate_layer}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.gate_scale >= 0:
            raise ValueError(f"gate_scale k must be negative, got {self.gate_scale}")

    @property
    def delete_below(self) -> float:
        return self.gate_scale / 2 if self.threshold is None else float(self.threshold)


class Attention(nn.Module):
    """Multi-head attention with an additive per-key bias [B, S_k], optional softmax_1 and an
    optional soft cap on the logits (cap * tanh(logit / cap), applied before the bias)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.h, self.dh = h, d // h
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x, kv=None, key_bias=None, causal: bool = False, softmax1: bool = False,
                cap: float | None = None):
        B, T, D = x.shape
        src = x if kv is None else kv
        S = src.shape[1]
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)
        k = self.k(src).view(B, S, self.h, self.dh).transpose(1, 2)
        v = self.v(src).view(B, S, self.h, self.dh).transpose(1, 2)
        if softmax1 and causal:
            raise ValueError("softmax_1 is used for encoder and cross attention only")
        if cap is not None:
            y = _capped_attention(q, k, v, key_bias, causal, softmax1, float(cap))
        else:
            if softmax1:  # softmax_1 = softmax over the keys plus one extra key with logit 0 and value 0
                k = torch.cat([k, k.new_zeros(B, self.h, 1, self.dh)], dim=2)
                v = torch.cat([v, v.new_zeros(B, self.h, 1, self.dh)], dim=2)
                bias = key_bias if key_bias is not None else x.new_zeros(B, S)
                key_bias = torch.cat([bias, bias.new_zeros(B, 1)], dim=1)
            mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


def _capped_attention(q, k, v, key_bias, causal: bool, softmax1: bool, cap: float):
    """Attention written out: logits cap*tanh(q.k/sqrt(dh)/cap) + key bias, then softmax(_1)."""
    logits = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    logits = cap * torch.tanh(logits / cap)
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :].float()
    if causal:
        T, S = logits.shape[-2:]
        logits = logits.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if softmax1:
        m = logits.amax(-1, keepdim=True).clamp(min=0).detach()   # the null logit 0 joins the max
        e = torch.exp(logits - m)
        w = e / (e.sum(-1, keepdim=True) + torch.exp(-m))
    else:
        w = torch.softmax(logits, dim=-1)
    return (w.to(v.dtype) @ v)


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.up, self.down = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    def __init__(self, c: MrT5Config):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn, self.mlp = Attention(c.d_model, c.n_head), MLP(c.d_model, c.d_ff)
        self.softmax1 = c.softmax1

    def forward(self, x, key_bias, cap=None):
        x = x + self.attn(self.ln1(x), key_bias=key_bias, softmax1=self.softmax1, cap=cap)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, c: MrT5Config):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attn, self.cross = Attention(c.d_model, c.n_head), Attention(c.d_model, c.n_head)
        self.mlp = MLP(c.d_model, c.d_ff)
        self.softmax1 = c.softmax1

    def forward(self, y, mem, mem_bias, cap=None):
        y = y + self.self_attn(self.ln1(y), causal=True)
        y = y + self.cross(self.ln2(y), kv=mem, key_bias=mem_bias, softmax1=self.softmax1, cap=cap)
        return y + self.mlp(self.ln3(y))


class _GateLinear(nn.Linear):
    """The gate's projection (a subclass only so the model's initialisation leaves it alone)."""


class DeleteGate(nn.Module):
    """G = k * sigmoid(g * (LN(h) . w + b)): [B, T, D] → [B, T] in (k, 0)."""

    def __init__(self, c: MrT5Config):
        super().__init__()
        self.ln = nn.LayerNorm(c.d_model)
        self.proj = _GateLinear(c.d_model, 1)
        self.k, self.g = float(c.gate_scale), float(c.gate_gain)
        nn.init.normal_(self.proj.weight, std=0.5 / (math.sqrt(c.d_model) * self.g))
        nn.init.constant_(self.proj.bias, c.gate_init / self.g)

    def forward(self, h):
        return self.k * torch.sigmoid(self.g * self.proj(self.ln(h)).squeeze(-1))


@dataclass
class EncoderOut:
    hidden: torch.Tensor            # [B, T'] final encoder states (T' = T unless hard deletion)
    key_bias: torch.Tensor | None   # [B, T'] additive bias the cross-attention applies
    gate: torch.Tensor | None       # [B, T] gate values G (None: no gate ran)
    keep: torch.Tensor | None       # [B, T] bool, positions kept (None: all)
    index: torch.Tensor | None      # [B, T'] original positions of the rows of `hidden` (hard deletion)

    @property
    def lengths(self) -> torch.Tensor:
        """Kept (non-padding) encoder length per sequence after deletion."""
        if self.keep is None:
            return torch.full((self.hidden.shape[0],), self.hidden.shape[1], device=self.hidden.device)
        return self.keep.sum(1)


def compact(x: torch.Tensor, keep: torch.Tensor):
    """Gather the kept rows of x [B, T, D] to the front: → x' [B, T'], key bias [B, T'] (0 kept,
    -inf padding), index [B, T'] (original positions), with T' = the longest kept row (at least 1)."""
    B, T, D = x.shape
    lengths = keep.sum(1)
    Tm = max(1, int(lengths.max()))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :Tm]   # kept first, in order
    xk = torch.gather(x, 1, order[..., None].expand(B, Tm, D))
    valid = torch.arange(Tm, device=x.device)[None, :] < lengths[:, None]
    bias = torch.zeros(B, Tm, device=x.device, dtype=x.dtype).masked_fill(~valid, float("-inf"))
    return xk, bias, order


class ByteEncDec(nn.Module):
    """A small pre-LN byte-level encoder–decoder (ByT5-like: deeper encoder) with MrT5's delete gate."""

    def __init__(self, c: MrT5Config):
        super().__init__()
        self.cfg = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.enc_pos = nn.Embedding(c.max_enc_len, c.d_model)
        self.dec_pos = nn.Embedding(c.max_dec_len, c.d_model)
        self.encoder = nn.ModuleList(EncoderBlock(c) for _ in range(c.enc_layers))
        self.decoder = nn.ModuleList(DecoderBlock(c) for _ in range(c.dec_layers))
        self.gate = DeleteGate(c)
        self.enc_ln, self.dec_ln = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        # T5-style scales: embeddings N(0, 1), weights N(0, 1/fan_in). (GPT-2's 0.02 leaves a model
        # this small unable to learn cross-attention alignment in a few hundred steps.)
        for mod in self.modules():
            if isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, std=1.0)
            elif isinstance(mod, nn.Linear) and not isinstance(mod, _GateLinear):
                nn.init.normal_(mod.weight, std=mod.in_features ** -0.5)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def encode(self, ids: torch.Tensor, mode: str = "none", keep: torch.Tensor | None = None,
               gate: torch.Tensor | None = None) -> EncoderOut:
        """Run the encoder. `mode`:
        - "none": no deletion (ByT5);
        - "soft": the gate's G is added to every later key (training);
        - "hard": positions with G < threshold are removed (inference); the kept ones keep G as
          their key bias, so hard deletion differs from soft deletion only by the removed keys'
          weights (below e^(cap + threshold));
        - "keep": positions where `keep` [B, T] is False are removed (random / stride baselines).
        `gate` [B, T] replaces the learned gate's values (tests, analysis)."""
        if mode not in ("none", "soft", "hard", "keep"):
            raise ValueError(f"unknown deletion mode {mode!r}; valid: none, soft, hard, keep")
        if mode == "keep" and keep is None:
            raise ValueError("mode='keep' needs a keep mask")
        c = self.cfg
        B, T = ids.shape
        if T > c.max_enc_len:
            raise ValueError(f"encoder input of {T} ids exceeds max_enc_len={c.max_enc_len}")
        pad = ids == PAD
        x = self.embed(ids) + self.enc_pos(torch.arange(T, device=ids.device))
        bias = torch.zeros(B, T, device=ids.device, dtype=x.dtype).masked_fill(pad, float("-inf")) \
            if pad.any() else None
        G, index = None, None
        for i, blk in enumerate(self.encoder):
            if i == c.gate_layer and mode != "none":
                if mode == "keep":
                    keep = keep.to(ids.device) & ~pad
                else:
                    G = self.gate(x) if gate is None else gate.to(x.dtype)
                    G = G.masked_fill(pad, c.gate_scale)
                    keep = (G >= c.delete_below) & ~pad
                    if mode == "soft":
                        bias = G if bias is None else bias + G
                if mode != "soft":
                    x, bias, index = compact(x, keep)
                    if mode == "hard":  # kept positions keep their gate value as a bias, as in training
                        bias = bias + torch.gather(G, 1, index)
            x = blk(x, bias, c.logit_cap)
        return EncoderOut(self.enc_ln(x), bias, G, keep, index)

    def decode(self, enc: EncoderOut, dec_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits [B, S, V]."""
        S = dec_in.shape[1]
        if S > self.cfg.max_dec_len:
            raise ValueError(f"decoder input of {S} ids exceeds max_dec_len={self.cfg.max_dec_len}")
        y = self.embed(dec_in) + self.dec_pos(torch.arange(S, device=dec_in.device))
        for blk in self.decoder:
            y = blk(y, enc.hidden, enc.key_bias, self.cfg.logit_cap)
        return self.head(self.dec_ln(y))

    def forward(self, enc_ids, tgt_ids, mode: str = "none", keep=None, gate=None):
        """Per-sequence mean cross-entropy [B] (nats per target id, padding ignored) and the EncoderOut."""
        enc = self.encode(enc_ids, mode, keep, gate)
        dec_in = torch.cat([torch.full_like(tgt_ids[:, :1], BOS), tgt_ids[:, :-1]], dim=1)
        logits = self.decode(enc, dec_in)
        nll = F.cross_entropy(logits.float().transpose(1, 2), tgt_ids, ignore_index=PAD, reduction="none")
        n = (tgt_ids != PAD).sum(1).clamp(min=1)
        return nll.sum(1) / n, enc


def deletion_ratio(enc: EncoderOut, enc_ids: torch.Tensor) -> torch.Tensor:
    """[B] fraction of each sequence's non-pad encoder positions that are (or would be) deleted."""
    valid = (enc_ids != PAD)
    if enc.keep is None:
        return torch.zeros(enc_ids.shape[0], device=enc_ids.device)
    return 1 - (enc.keep & valid).sum(1).float() / valid.sum(1).clamp(min=1).float()


# --- the controller ---------------------------------------------------------------------------------

class PIController:
    """alpha_t = max(0, kp * p_t + ki * i_t) with p_t an EMA of the error (target - measured
    deletion ratio) and i_t its running sum: deletion below target raises alpha (more deletion)."""

    def __init__(self, target: float, kp: float, ki: float, gamma: float = 0.9):
        if not 0 <= target < 1:
            raise ValueError(f"target deletion ratio must be in [0, 1), got {target}")
        self.target, self.kp, self.ki, self.gamma = float(target), float(kp), float(ki), float(gamma)
        self.p = self.i = 0.0
        self.alpha = 0.0

    def update(self, measured: float) -> float:
        err = self.target - float(measured)
        self.p = self.gamma * self.p + (1 - self.gamma) * err
        self.i += err
        self.alpha = max(0.0, self.kp * self.p + self.ki * self.i)
        return self.alpha


# --- training through tokenbook.train ------------------------------------------------------------------

class CorruptionTask(nn.Module):
    """Adapter for `tokenbook.train.train`, which calls `model(input_ids=x, labels=x).loss` on byte
    windows x [B, L]: corrupts x (`objective` "span" or "denoise"; own RNG, so every arm sees the
    same examples), applies the arm's deletion, and returns CE (+ alpha * mean gate for MrT5).
    One instance per arm.

    arm: "none" (ByT5), "gate" (MrT5, soft deletion + controller), "random", "stride"."""

    def __init__(self, model: ByteEncDec, arm: str, *, noise_density: float, mean_span: float, seed: int,
                 ratio: float = 0.0, controller: PIController | None = None, objective: str = "span"):
        super().__init__()
        if arm not in ("none", "gate", "random", "stride"):
            raise ValueError(f"unknown arm kind {arm!r}; valid: none, gate, random, stride")
        if arm == "gate" and controller is None:
            raise ValueError("the gate arm needs a PIController")
        self.model, self.arm, self.ratio, self.controller = model, arm, float(ratio), controller
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        self.noise_density, self.mean_span, self.objective = float(noise_density), float(mean_span), objective
        self.rng_data = np.random.default_rng([seed, 101])
        self.rng_del = np.random.default_rng([seed, 202])
        self.alpha = 0.0
        self.last: dict = {}
        self.history: list[dict] = []

    def forward(self, input_ids, labels=None):
        enc_ids, tgt = corrupt_batch(input_ids.cpu().numpy(), self.rng_data, self.noise_density, self.mean_span,
                                     self.objective)
        dev = input_ids.device
        enc_ids, tgt = enc_ids.to(dev), tgt.to(dev)
        B, T = enc_ids.shape
        keep = None
        if self.arm == "random":
            keep = random_keep(B, T, self.ratio, self.rng_del)
        elif self.arm == "stride":
            keep = stride_keep(B, T, self.ratio)
        mode = {"none": "none", "gate": "soft", "random": "keep", "stride": "keep"}[self.arm]
        ce, enc = self.model(enc_ids, tgt, mode, keep)
        loss = ce.mean()
        self.last = {"ce": ce.detach().mean(), "ratio": deletion_ratio(enc, enc_ids).mean().detach()}
        if self.arm == "gate":
            valid = enc_ids != PAD
            # mean(G) - k >= 0: the paper's regularizer mean(G) shifted by a constant (same gradients),
            # so that the logged training loss stays positive
            reg = enc.gate[valid].mean() - self.model.cfg.gate_scale
            loss = loss + self.alpha * reg
            self.last["gate_mean"] = reg.detach()
        return SimpleNamespace(loss=loss)

    def on_step(self, step: int, loss: float) -> None:
        """After each optimizer step: record the batch's deletion ratio and update alpha."""
        ratio = float(self.last.get("ratio", 0.0))
        if self.controller is not None:
            self.alpha = self.controller.update(ratio)
        self.history.append({"step": step, "ce": float(self.last.get("ce", float("nan"))), "ratio": ratio,
                             "alpha": self.alpha})


def train_task(model: ByteEncDec, arm: str, windows: torch.Tensor, train_cfg: dict, *, noise_density: float,
               mean_span: float, seed: int, ratio: float = 0.0, controller: dict | None = None,
               objective: str = "span", device: str = "cpu"):
    """Train `model` in place on `objective` ("span" / "denoise") of `windows` (1-D byte-id stream)
    with the book's trainer (AdamW, warm-up + cosine via trainer.lr_factor, progress bar, seeded batches).
    Returns (TrainResult, per-step history: ce, deletion ratio, alpha)."""
    from ..train import TrainConfig, train
    cfg = TrainConfig.from_dict({**train_cfg, "seed": seed})
    ctrl = PIController(ratio, **controller) if arm == "gate" else None
    task = CorruptionTask(model, arm, noise_density=noise_density, mean_span=mean_span, seed=seed,
                          ratio=ratio, controller=ctrl, objective=objective)
    res = train(task, windows, cfg, device=device, resume=False, on_step=task.on_step)
    model.eval()
    return res, task.history


# --- evaluation ----------------------------------------------------------------------------------------

def autocast(device: str):
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model: ByteEncDec, enc_ids: torch.Tensor, tgt: torch.Tensor, mode: str, *, keep=None,
             batch_size: int = 64, device: str = "cpu") -> dict:
    """Per sequence: loss (nats per target id), deletion ratio, kept encoder length; plus the gate
    values and keep masks (CPU tensors) for analysis."""
    model.eval()
    out = {"loss": [], "ratio": [], "kept": [], "gate": [], "keep": []}
    for s in range(0, len(enc_ids), batch_size):
        e, t = enc_ids[s:s + batch_size].to(device), tgt[s:s + batch_size].to(device)
        k = None if keep is None else keep[s:s + batch_size].to(device)
        with autocast(device):
            ce, enc = model(e, t, mode, k)
        out["loss"].append(ce.float().cpu())
        out["ratio"].append(deletion_ratio(enc, e).cpu())
        out["kept"].append(enc.lengths.cpu())
        if enc.gate is not None:
            out["gate"].append(enc.gate.float().cpu())
        out["keep"].append((enc.keep if enc.keep is not None else torch.ones_like(e, dtype=torch.bool)).cpu())
    return {k: (torch.cat(v).numpy() if v else None) for k, v in out.items()}


@torch.no_grad()
def encoder_fn(model: ByteEncDec, enc_ids: torch.Tensor, mode: str, keep=None, device: str = "cpu"):
    """A zero-argument callable running the encoder once (for `tokenbook.timing`)."""
    e = enc_ids.to(device)
    k = None if keep is None else keep.to(device)

    def go():
        with torch.inference_mode(), autocast(device):
            return model.encode(e, mode, k).hidden
    return go


def ideal_encoder_speedup(cfg: MrT5Config, ratio: float) -> float:
    """Layer-count model of the encoder speedup (linear cost per token, attention ignored):
    L / (l + (L - l)(1 - ratio))."""
    L, l = cfg.enc_layers, cfg.gate_layer
    return L / (l + (L - l) * (1 - ratio))


def config_dict(cfg: MrT5Config) -> dict:
    return asdict(cfg)
