"""Landmark attention: grouped softmax over blocks and top-k block retrieval, in a tiny RoPE LM.

Mohtashami & Jaggi, "Landmark Attention: Random-Access Infinite Context Length for Transformers"
(arXiv 2305.16300; chapter ``landmark-attention``). The input is cut into blocks of ``b`` tokens
and a landmark token is appended to every block, so block ``g`` occupies token slots
``g(b+1) .. g(b+1)+b`` (the last slot is its landmark). For a query ``i`` in block ``c``:

    outer softmax over   {s_ij : j a regular token of block c, j <= i}  ∪  {s_i,lm(g) : g < c}
    inner softmax over   {s_ij : j a regular token of block g}          for every previous g
    a_ij = outer(j)                         j in the current block
    a_ij = outer(lm(g)) · inner_g(j)        j a regular token of a previous block g
    a_i,lm(g) = 0                           a landmark only gates its block; its value is not read

so the landmark's score decides how much of the query's attention its whole block gets (the
paper's "grouped softmax"; the current block's landmark is ignored, as in the authors' code).
Rows sum to 1. Training uses this over the whole (short) sequence.

Inference beyond the training length (our reading of the paper's retrieval): a query keeps the
blocks of its local window (the last ``n_local`` previous blocks, at their true RoPE distances,
all within the trained range) and, among the older blocks, only the ``k`` whose landmark scores
are highest for that query and head; the grouped softmax then runs over the selected blocks only.
Older blocks get one shared position (every retrieved block is scored as if it were the oldest
block of a training window: the query rotated at position ``far_pos``, a key at its offset inside
its block), so no RoPE distance beyond the trained range ever appears. With ``k`` >= the number of
older blocks and ``far_pos=None`` (true positions) retrieval equals full grouped attention.

The model (`LandmarkLM`) takes byte ids, inserts the landmarks itself and returns logits at the byte
positions only, so `tokenbook.train.train` and the book's scorers use it like any causal LM. With
``block=None`` it is a plain causal RoPE transformer (the baselines), optionally with a sliding
window.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = float("-inf")


# --- layout ----------------------------------------------------------------------------------

def insert_landmarks(ids: torch.Tensor, block: int, landmark_id: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] ids → ([B, G(b+1)] ids with a landmark after every block of `block`, index [N] of the
    original tokens in the new sequence). A trailing partial block is padded at the end (after every
    real token, so causality keeps the pads from touching real positions)."""
    B, N = ids.shape
    G = -(-N // block)
    padded = torch.full((B, G * block), pad_id, dtype=ids.dtype, device=ids.device)
    padded[:, :N] = ids
    lm = torch.full((B, G, 1), landmark_id, dtype=ids.dtype, device=ids.device)
    out = torch.cat([padded.view(B, G, block), lm], dim=2).view(B, G * (block + 1))
    pos = torch.arange(N, device=ids.device)
    return out, pos + pos // block


# --- grouped softmax -------------------------------------------------------------------------

def grouped_weights(s: torch.Tensor, qpos: torch.Tensor, block: int, select: torch.Tensor | None = None) -> torch.Tensor:
    """Landmark grouped-softmax weights.

    s: logits [B, H, Tq, Tk] with Tk = G(block+1) keys in the landmark layout; qpos: [Tq] token
    index of each query; select: optional bool [B, H, Tq, G], which previous blocks a query may use
    (None: all). Returns weights [B, H, Tq, Tk]: rows sum to 1, zero on every landmark and on every
    key after the query."""
    B, H, Tq, Tk = s.shape
    b1 = block + 1
    if Tk % b1:
        raise ValueError(f"{Tk} keys are not whole blocks of {block} tokens + 1 landmark")
    G = Tk // b1
    s5 = s.view(B, H, Tq, G, b1)
    qblk, qoff = qpos // b1, qpos % b1
    grp = torch.arange(G, device=s.device)
    prev = grp[None, :] < qblk[:, None]                                        # [Tq, G]
    prev = prev.expand(B, H, Tq, G) if select is None else prev & select
    cur = grp[None, :] == qblk[:, None]                                        # [Tq, G]
    off = torch.arange(b1, device=s.device)
    # regular tokens of the current block up to the query (a landmark query sees its whole block)
    cur_tok = cur[:, :, None] & (off[None, None, :] <= qoff[:, None, None]) & (off < block)[None, None, :]
    z = torch.full_like(s5, NEG)
    z = torch.where(cur_tok, s5, z)
    z[..., block] = torch.where(prev, s5[..., block], z[..., block])
    outer = torch.softmax(z.reshape(B, H, Tq, Tk), -1).view(B, H, Tq, G, b1)
    inner = torch.softmax(s5[..., :block], -1)
    w = torch.zeros_like(s5)
    w[..., :block] = torch.where(cur[:, :, None], outer[..., :block], outer[..., block:] * inner)
    return w.view(B, H, Tq, Tk)


def retrieval_select(lm_scores: torch.Tensor, qpos: torch.Tensor, block: int, n_local: int, k: int) -> torch.Tensor:
    """Which previous blocks each query uses at inference: the last `n_local` previous blocks plus
    the top-`k` older blocks by landmark score (per query and head). lm_scores [B, H, Tq, G] → bool."""
    G = lm_scores.shape[-1]
    qblk = qpos // (block + 1)
    grp = torch.arange(G, device=lm_scores.device)
    local = (grp[None, :] < qblk[:, None]) & (grp[None, :] >= qblk[:, None] - n_local)
    far = grp[None, :] < qblk[:, None] - n_local
    sel = local.expand_as(lm_scores).clone()
    kk = min(int(k), G)
    if kk > 0:
        sc = lm_scores.masked_fill(~far, NEG)
        top = sc.topk(kk, dim=-1).indices
        chosen = torch.zeros_like(sel).scatter_(-1, top, True)
        sel |= chosen & far
    return sel


# --- RoPE and the tiny transformer -------------------------------------------------------------

def rope(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) by pos·θ^(-2i/D); x [..., T, D], pos [T] (or scalar)."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D // 2, device=x.device, dtype=torch.float32) * 2 / D)
    ang = pos.float().reshape(-1, 1) * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


@dataclass
class AttnMode:
    """How attention runs. kind: "causal" (softmax; `window` keys at most, None = all),
    "grouped" (landmark grouped softmax over every previous block), "retrieval" (local window of
    `n_local` previous blocks + top-`k` older blocks; `far_pos` the shared query position for older
    blocks, None = true positions)."""
    kind: str = "causal"
    window: int | None = None
    n_local: int = 0
    k: int = 0
    far_pos: int | None = None
    q_chunk: int = 512


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, theta: float):
        super().__init__()
        self.h, self.theta = n_heads, theta
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, mode: AttnMode, block: int | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device)
        qr, kr = rope(q, pos, self.theta), rope(k, pos, self.theta)
        scale = 1.0 / math.sqrt(D // self.h)
        if mode.kind == "causal":
            mask = pos[None, :] <= pos[:, None]
            if mode.window is not None:
                mask &= pos[:, None] - pos[None, :] < mode.window
            y = F.scaled_dot_product_attention(qr, kr, v, attn_mask=mask)
        else:
            if block is None:
                raise ValueError("grouped/retrieval attention needs a landmark model (block set)")
            ys = []
            far_k = None
            if mode.kind == "retrieval" and mode.far_pos is not None:
                far_k = rope(k, pos % (block + 1), self.theta)
            for s0 in range(0, T, mode.q_chunk):
                qp = pos[s0:s0 + mode.q_chunk]
                s = (qr[:, :, s0:s0 + mode.q_chunk] @ kr.transpose(-1, -2)) * scale
                sel = None
                if mode.kind == "retrieval":
                    b1 = block + 1
                    G = T // b1
                    if far_k is not None:
                        qf = rope(q[:, :, s0:s0 + mode.q_chunk], torch.tensor([mode.far_pos], device=x.device),
                                  self.theta)
                        s_far = (qf @ far_k.transpose(-1, -2)) * scale
                        grp = torch.arange(G, device=x.device)
                        far = (grp[None, :] < (qp // b1)[:, None] - mode.n_local)                # [Tq, G]
                        far_tok = far.repeat_interleave(b1, dim=1)                              # [Tq, T]
                        s = torch.where(far_tok, s_far, s)
                    lm = s.view(*s.shape[:-1], G, b1)[..., block]
                    sel = retrieval_select(lm, qp, block, mode.n_local, mode.k)
                ys.append(grouped_weights(s, qp, block, sel) @ v)
            y = torch.cat(ys, 2)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Layer(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, theta: float):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.attn = Attention(d, n_heads, theta)
        self.ff = nn.Sequential(nn.Linear(d, d_ff, bias=False), nn.GELU(), nn.Linear(d_ff, d, bias=False))

    def forward(self, x, mode, block):
        x = x + self.attn(self.n1(x), mode, block)
        return x + self.ff(self.n2(x))


@dataclass
class LMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class LandmarkLM(nn.Module):
    """Tiny pre-norm RoPE transformer over byte ids. `block` set: a landmark (id `vocab_size`, the
    extra embedding row) after every `block` bytes and grouped softmax; `block=None`: plain causal
    attention. Logits are returned at the input (byte) positions only: [B, N, vocab_size + 1]."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int, block: int | None = None, rope_theta: float = 10000.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1 (or None for no landmarks), got {block}")
        self.block, self.landmark_id = block, vocab_size
        self.emb = nn.Embedding(vocab_size + 1, hidden_size)   # the same size with or without landmarks
        self.layers = nn.ModuleList(Layer(hidden_size, num_heads, intermediate_size, rope_theta)
                                    for _ in range(num_layers))
        self.norm = nn.RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size + 1, bias=False)
        self.mode = AttnMode("grouped" if block else "causal")
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> LMOutput:
        ids, keep = input_ids, None
        if self.block:
            ids, keep = insert_landmarks(input_ids, self.block, self.landmark_id)
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x, self.mode, self.block)
        logits = self.head(self.norm(x))
        if keep is not None:
            logits = logits[:, keep]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return LMOutput(logits, loss)


@contextmanager
def attention_mode(model: LandmarkLM, **kw):
    """Run `model` with another `AttnMode` (e.g. kind="retrieval", n_local=15, k=4, far_pos=271)."""
    previous = model.mode
    model.mode = AttnMode(**kw)
    try:
        yield model
    finally:
        model.mode = previous


def window_blocks(train_len: int, block: int) -> tuple[int, int]:
    """(n_local, far_pos) for a landmark model trained on `train_len` bytes: the local window keeps
    the train_len/block - 1 previous blocks (every true distance stays inside the trained range) and
    retrieved blocks share the position of a training window's oldest block (distance ≈ window)."""
    if train_len % block:
        raise ValueError(f"train_len {train_len} must be a multiple of the block {block}")
    n_blocks = train_len // block
    return n_blocks - 1, n_blocks * (block + 1) - 1


def keys_per_query(n: int, kind: str, *, window: int | None = None, block: int | None = None,
                   n_local: int = 0, k: int = 0) -> float:
    """Mean number of (non-landmark) value tokens a byte query reads in a sequence of `n` bytes:
    full causal i+1, sliding window min(i+1, window), landmark retrieval = the current block up to
    the query + the local blocks + k retrieved blocks (landmarks only score, their values are unread)."""
    i = torch.arange(n, dtype=torch.float64)
    if kind == "full":
        c = i + 1
    elif kind == "window":
        c = torch.clamp(i + 1, max=float(window))
    elif kind == "retrieval":
        blk, off = torch.div(i, block, rounding_mode="floor"), i % block
        c = off + 1 + torch.clamp(blk, max=n_local) * block + torch.clamp(blk - n_local, min=0, max=k) * block
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return float(c.mean())


# --- passkey items ---------------------------------------------------------------------------

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_item(n: int, rng, *, digits: int = 5, far_from_end: int | None = None, repeats: int = 1,
                 encode=lambda s: [c + 3 for c in s.encode()]) -> tuple[list[int], list[int]]:
    """A byte sequence of exactly `n` ids: filler with 'pass key is @DDDDD. ' hidden at a random depth,
    ending with 'The pass key is @DDDDD'. Returns (ids, positions of the answer digits at the end).
    The key has distinct digits and '@' occurs nowhere else, so a single-token match (an induction
    head) suffices to find it: a tiny model can learn the task at its training length.
    `far_from_end`: the hidden key ends at least this many bytes before the end (out of a window).
    `repeats` > 1 (training items): the question and answer are asked that many times at the end, so
    an item gives several answer tokens to learn from (the first from far away, later ones nearby)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 1 <= digits <= 10:
        raise ValueError(f"digits must be 1..10 (distinct digits), got {digits}")
    key = "".join(str(int(d)) for d in rng.permutation(10)[:digits])
    needle, tail = encode(f"pass key is @{key}. "), encode(f" The pass key is @{key}." * (repeats - 1) + f" The pass key is @{key}")
    room = n - len(tail) - len(needle)
    if room < 0:
        raise ValueError(f"length {n} is too short for a passkey item")
    hi = room if far_from_end is None else n - far_from_end - len(needle)
    if hi < 0:
        raise ValueError(f"length {n} cannot hide the key {far_from_end} bytes before the end")
    depth = int(rng.integers(0, min(hi, room) + 1))
    fill = encode(FILLER * (n // len(FILLER) + 2))
    body = fill[:depth] + needle + fill[depth:depth + room - depth]
    ids = body + tail
    assert len(ids) == n
    return ids, list(range(n - digits, n))


@torch.no_grad()
def passkey_correct(model, items: list[tuple[list[int], list[int]]], device: str = "cpu", batch: int = 8) -> list[bool]:
    """Greedy (= teacher-forced argmax) exact match of every answer digit, one flag per item."""
    out = []
    model.eval()
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        x = torch.tensor([ids for ids, _ in chunk], device=device)
        pred = model(input_ids=x).logits.argmax(-1)
        for r, (ids, ans) in enumerate(chunk):
            a = torch.tensor(ans, device=device)
            out.append(bool((pred[r, a - 1] == x[r, a]).all()))
    return out
