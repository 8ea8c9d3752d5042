"""SirLLM (Yao, Li, Zhao, ACL 2024, arXiv:2405.12528): streaming dialogue with a token-entropy memory.

A streaming chat model cannot keep every past token: its KV cache holds at most B tokens.
StreamingLLM (Xiao et al. 2023) keeps the first few tokens (the "attention sinks") and the most
recent ones, so anything said more than ~B tokens ago is forgotten. SirLLM keeps the sinks and the
tokens that carried the most information when they were read, measured by their **token entropy**

    e_i = −log P(x_i | x_<i)                  (the model's own surprise at token i, in nats)

computed from the streaming model's logits as the dialogue is read (no extra pass). Each turn,
the stored values fade by a **decay** factor d ≤ 1, so a token read t turns ago competes with

    score_i = e_i · d^t .

Before a turn of n tokens is read, the cache is cut to B − n tokens (so the cache never holds more
than B, the new turn included): the sinks, optionally the last `recent` tokens, and the highest
scores among the rest. The official runs use sinks = 4, recent = 0, and d = 1 (Grocery Shopping),
0.9 (Rock-Paper-Scissors), 0.7 (DailyDialog).

Positions. The official code (built on StreamingLLM's "pos_shift") gives every cached token the
RoPE position of its **slot in the cache**: after an eviction the survivors are renumbered 0..k−1
and a new token is placed at k, so positions never exceed B. We store rotated keys, so an eviction
re-rotates each kept key by (new slot − old position) — exact, since RoPE rotations compose
(`rotate_rows`, the batched `patterns.rotate`). `positions="original"` instead keeps every token's
position in the stream (gaps where tokens were evicted; positions grow without bound). Both are
tested.

`Policy` says which tokens survive (`streaming_llm`, `sirllm`, `random_keep`, `full`); `Stream`
reads one dialogue turn by turn under one policy, or under several that share a budget as rows of
one batch. The top-k choice is the shared `selection.topk_tokens`. Shapes: k policies (rows),
n tokens in a chunk, c tokens in the cache, V vocabulary, H key heads, D head size.
Book chapter: `sirllm`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import patterns as pt
from . import selection as sel

SCORES = ("entropy", "recency", "random", "none")
POSITIONS = ("shift", "original")


@dataclass(frozen=True)
class Policy:
    """A KV-cache policy for streaming.

    budget: the most tokens the cache may hold, the incoming chunk included (None: never evict).
    sinks: first tokens always kept; recent: last tokens always kept; the rest of the room goes to
    the best `score` ("entropy": SirLLM's decayed token entropy, "recency": StreamingLLM,
    "random": a random subset). decay: SirLLM's per-turn factor on stored entropies.
    """
    name: str
    budget: int | None = None
    sinks: int = 4
    recent: int = 0
    score: str = "none"
    decay: float = 1.0
    positions: str = "shift"
    seed: int = 0

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; valid: {', '.join(SCORES)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.sinks < 0 or self.recent < 0:
            raise ValueError("sinks and recent must be ≥ 0")
        if self.budget is not None and self.budget <= self.sinks + self.recent:
            raise ValueError(f"budget {self.budget} leaves no room besides {self.sinks} sinks + {self.recent} recent")
        if self.budget is not None and self.score == "none":
            raise ValueError("a bounded cache needs a score to evict by (entropy, recency or random)")

    @property
    def needs_entropy(self) -> bool:
        return self.score == "entropy"


def full(name: str = "full") -> Policy:
    """Never evict (the upper bound)."""
    return Policy(name)


def streaming_llm(budget: int, *, sinks: int = 4, positions: str = "shift", name: str | None = None) -> Policy:
    """StreamingLLM: the sinks and the most recent tokens."""
    return Policy(name or f"streaming@{budget}", budget, sinks, 0, "recency", 1.0, positions)


def sirllm(budget: int, *, decay: float = 1.0, sinks: int = 4, recent: int = 0, positions: str = "shift",
           name: str | None = None) -> Policy:
    """SirLLM: the sinks (+ `recent` last tokens) and the highest decayed token entropies."""
    return Policy(name or f"sirllm@{budget},d={decay:g}", budget, sinks, recent, "entropy", decay, positions)


def random_keep(budget: int, *, sinks: int = 4, seed: int = 0, positions: str = "shift",
                name: str | None = None) -> Policy:
    """Control: the sinks and a random subset of the cache at each eviction (no criterion)."""
    return Policy(name or f"random@{budget}", budget, sinks, 0, "random", 1.0, positions, seed)


def token_entropy(logits: torch.Tensor, ids: torch.Tensor, prev_logits: torch.Tensor | None = None) -> torch.Tensor:
    """e_i = −log P(x_i | x_<i) for the n tokens `ids` of a chunk, in nats: [n].

    logits [n, V]: row j predicts token j + 1 (as a causal LM returns them). The chunk's first token
    is scored with `prev_logits` [V], the last row of the previous chunk; without one (the stream's
    very first token) it gets +inf, i.e. it is never evicted for its score. (The official code gives
    a chunk's first token the chunk's largest entropy instead.)
    """
    ids = ids.view(-1).to(logits.device)
    lp = torch.log_softmax(logits.float(), -1)
    out = torch.empty(len(ids), dtype=torch.float32, device=logits.device)
    out[1:] = -lp[:-1].gather(-1, ids[1:, None])[:, 0]
    out[0] = float("inf") if prev_logits is None else -torch.log_softmax(prev_logits.float(), -1)[ids[0]]
    return out


def keep_indices(scores: torch.Tensor, n_keep: int, *, sinks: int, recent: int) -> torch.Tensor:
    """Cache slots to keep, sorted: the first `sinks`, the last `recent`, then the top scores. [n_keep]"""
    n = scores.shape[0]
    if n_keep >= n:
        return torch.arange(n, device=scores.device)
    always = torch.cat([torch.arange(min(sinks, n)), torch.arange(max(n - recent, 0), n)]).unique().to(scores.device)
    return sel.topk_tokens(scores, n_keep, always=always)


class Stream:
    """One streaming dialogue read under k policies at once (rows of one batch).

    The policies must share a cache budget, so that every row's cache holds the same number of
    tokens at every step; they may differ in everything else (score, decay, sinks, positions). Each
    row is exactly what a stream under that policy alone would compute (a batch of 1 is the plain
    case); batching only saves the per-forward overhead (it matters on a GPU).

    State per row and cached token (cache order, [k, c]): `pos` its RoPE position, `origin` its
    index in the stream, `turn` the chunk it came in, `entropy` its token entropy (NaN when no row
    needs one).
    """

    def __init__(self, model, policies):
        from transformers import DynamicCache
        self.policies = [policies] if isinstance(policies, Policy) else list(policies)
        if not self.policies:
            raise ValueError("a stream needs at least one policy")
        if len({p.budget for p in self.policies}) != 1:
            raise ValueError(f"policies of one stream must share the budget, got {[p.budget for p in self.policies]}")
        self.model, self.budget = model, self.policies[0].budget
        self.cache = DynamicCache()
        k, dev = len(self.policies), model.device
        self.pos = torch.empty(k, 0, dtype=torch.long, device=dev)
        self.origin = torch.empty(k, 0, dtype=torch.long, device=dev)
        self.turn = torch.empty(k, 0, dtype=torch.long, device=dev)
        self.entropy = torch.empty(k, 0, dtype=torch.float32, device=dev)
        self.seen = 0                 # tokens streamed so far
        self.turns = 0                # chunks fed so far
        self.evictions = 0
        self.max_len = 0              # the largest the cache has been (never above the budget)
        self.computed = 0             # tokens this stream ran through the model, per row (its work)
        self.last_logits: torch.Tensor | None = None                      # [k, V]
        self._gens = [torch.Generator().manual_seed(p.seed) for p in self.policies]
        self._inv_freq = pt.rope_inv_freq(model)
        self._shift = torch.tensor([p.positions == "shift" for p in self.policies], device=dev)
        self._entropy = any(p.needs_entropy for p in self.policies)

    @property
    def policy(self) -> Policy:
        if len(self.policies) != 1:
            raise AttributeError("this stream has several policies: use .policies")
        return self.policies[0]

    def __len__(self) -> int:
        return int(self.origin.shape[1])

    # ---- eviction -------------------------------------------------------------------------------
    def scores(self) -> torch.Tensor:
        """What each row's policy ranks its cached tokens by, now: [k, c] (higher is kept)."""
        out = torch.zeros(self.origin.shape, dtype=torch.float32, device=self.origin.device)
        for r, p in enumerate(self.policies):
            if p.score == "entropy":
                age = (self.turns - self.turn[r]).to(torch.float64)
                out[r] = (self.entropy[r].double() * (p.decay ** age)).float()
            elif p.score == "recency":
                out[r] = self.origin[r].float()
            elif p.score == "random":
                out[r] = torch.rand(len(self), generator=self._gens[r]).to(out.device)
        return out

    def make_room(self, n_incoming: int) -> None:
        """Cut the cache so that it and `n_incoming` new tokens fit the budget."""
        B = self.budget
        if B is None:
            return
        n_keep = B - n_incoming
        need = max(p.sinks + p.recent for p in self.policies)
        if n_keep < need:
            raise ValueError(f"a chunk of {n_incoming} tokens does not fit cache budget {B} (with {need} sink and "
                             "recent tokens kept): raise the budget or shorten the turns")
        if len(self) > n_keep:
            sc = self.scores()
            self.evict(torch.stack([keep_indices(sc[r], n_keep, sinks=p.sinks, recent=p.recent)
                                    for r, p in enumerate(self.policies)]))

    def evict(self, keep: torch.Tensor) -> None:
        """Keep only the cache slots `keep` ([k, n] or [n], sorted) in every layer; in shift mode the
        survivors move to slots 0..n−1 and their keys are re-rotated by (new − old position)."""
        keep = keep.to(self.origin.device)
        keep = keep.expand(len(self.policies), -1) if keep.dim() == 1 else keep
        old = self.pos.gather(1, keep)
        new = torch.where(self._shift[:, None], torch.arange(keep.shape[1], device=keep.device)[None], old)
        delta = new - old
        moved = bool((delta != 0).any())
        for layer in self.cache.layers:
            idx = keep.to(layer.keys.device)[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            k, v = layer.keys.gather(2, idx), layer.values.gather(2, idx)
            if moved:
                k = rotate_rows(k, delta.to(k.device), self._inv_freq)
            layer.keys, layer.values = k, v
        self.pos, self.origin = new, self.origin.gather(1, keep)
        self.turn, self.entropy = self.turn.gather(1, keep), self.entropy.gather(1, keep)
        self.evictions += 1

    # ---- reading and writing --------------------------------------------------------------------
    def next_positions(self, n: int) -> torch.Tensor:
        """RoPE positions [k, n] of the next n tokens: the next free slots (shift) or the stream's (original)."""
        start = torch.where(self._shift, torch.full_like(self._shift, len(self), dtype=torch.long),
                            torch.full_like(self._shift, self.seen, dtype=torch.long))
        return start[:, None] + torch.arange(n, device=start.device)[None]

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Run ids [k, n] (or [n], the same for every row) on the cache; returns logits [k, n or 1, V]."""
        k = len(self.policies)
        ids = ids.view(1, -1).expand(k, -1) if ids.dim() == 1 else ids
        n = ids.shape[1]
        positions = self.next_positions(n)
        dev = self.model.device
        out = self.model(input_ids=ids.to(dev), position_ids=positions.to(dev),
                         attention_mask=torch.ones(k, len(self) + n, dtype=torch.long, device=dev),
                         past_key_values=self.cache, use_cache=True, logits_to_keep=0 if self._entropy else 1)
        logits = out.logits.float()
        if self._entropy:
            ent = torch.stack([token_entropy(logits[r], ids[r], None if self.last_logits is None else self.last_logits[r])
                               for r in range(k)])
        else:
            ent = torch.full((k, n), float("nan"), device=logits.device)
        org = torch.arange(self.seen, self.seen + n, device=self.origin.device)
        self.pos = torch.cat([self.pos, positions], 1)
        self.origin = torch.cat([self.origin, org.expand(k, -1)], 1)
        self.turn = torch.cat([self.turn, torch.full((k, n), self.turns, dtype=torch.long, device=self.origin.device)], 1)
        self.entropy = torch.cat([self.entropy, ent.to(self.entropy.device)], 1)
        self.seen += n
        self.computed += n
        self.max_len = max(self.max_len, len(self))
        self.last_logits = logits[:, -1]
        return logits

    def feed(self, ids, *, reserve: int = 0) -> torch.Tensor:
        """Read one turn (token ids [n], the same for every row); returns the logits after its last
        token, [k, V].

        Evicts first (room for the n tokens plus `reserve` more, e.g. an answer to be generated), then
        runs the model on the chunk with the cache. A new turn ages every stored entropy by one decay step.
        """
        ids = torch.as_tensor(ids, dtype=torch.long).view(-1)
        if ids.numel() == 0:
            raise ValueError("empty chunk")
        self.make_room(ids.numel() + reserve)
        logits = self._forward(ids)
        self.turns += 1
        return logits[:, -1]

    @torch.inference_mode()
    def generate(self, prompt, n_new: int, stop=None) -> list[list[int]]:
        """Read `prompt` (the question turn, ending with the start of the answer) and greedily generate
        up to n_new tokens per row (their room is reserved up front: no eviction while answering).
        `stop`: token ids that end an answer (not returned). Returns one token list per row."""
        stop = set() if stop is None else set(stop)
        logits = self.feed(prompt, reserve=n_new)
        toks = []
        for i in range(n_new):
            t = logits.argmax(-1)                                          # [k]
            toks.append(t.tolist())
            if i == n_new - 1 or all(any(s[j] in stop for s in toks) for j in range(len(self.policies))):
                break
            logits = self._forward(t[:, None])[:, -1]
        out = []
        for r in range(len(self.policies)):
            row = [s[r] for s in toks]
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            out.append(row[:cut])
        return out

    # ---- sharing a prefix -----------------------------------------------------------------------
    def fork(self, policies) -> "Stream":
        """This (one-row) stream's state copied to every row of a stream under other policies. Only
        valid while nothing was evicted (every policy has then seen exactly the same cache), and with
        entropies computed if a new policy needs them. The new stream's work (`computed`) starts at 0."""
        policies = [policies] if isinstance(policies, Policy) else list(policies)
        if len(self.policies) != 1:
            raise RuntimeError("fork() copies a one-row stream")
        if self.evictions:
            raise RuntimeError("fork() after an eviction would hand another policy this policy's cache")
        if any(p.needs_entropy for p in policies) and len(self) and bool(torch.isnan(self.entropy).any()):
            raise RuntimeError("fork() to an entropy policy needs a stream that computed entropies")
        s = Stream(self.model, policies)
        k = len(policies)
        for li, layer in enumerate(self.cache.layers):
            if layer.keys.numel():
                s.cache.update(layer.keys.expand(k, -1, -1, -1).clone(), layer.values.expand(k, -1, -1, -1).clone(), li)
        s.pos, s.origin, s.turn = (x.expand(k, -1).clone() for x in (self.pos, self.origin, self.turn))
        s.entropy = self.entropy.expand(k, -1).clone()
        s.seen, s.turns, s.max_len = self.seen, self.turns, self.max_len
        s.last_logits = None if self.last_logits is None else self.last_logits.expand(k, -1).clone()
        return s

    def retained(self, start: int, end: int) -> list[float]:
        """Per row: the fraction of the stream's tokens [start, end) still in the cache."""
        if end <= start:
            raise ValueError("empty span")
        return (((self.origin >= start) & (self.origin < end)).sum(1).float() / (end - start)).tolist()


def rotate_rows(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE'd keys x [k, H, T, D] moved by delta [k, T] positions (one shift per row and token);
    the batched form of `patterns.rotate` (HF's half-split layout)."""
    ang = delta.to(torch.float32)[..., None] * inv_freq.to(x.device)                   # [k, T, D/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], -1)
    return (xf * cos + rot * sin).to(x.dtype)
