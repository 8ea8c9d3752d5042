"""Text compressed by a small byte LM (M1) and arithmetic coding, as tokens for a second LM (M2).

Lester et al., "Training LLMs over Neurally Compressed Text" (arXiv:2404.03626). The pieces:

- **M1**, the compressor's model: a tiny byte-level MLP over the last `k` bytes (`ByteMLP`, trained
  here; the paper's M1 is a 3m-parameter Transformer). For coding it runs in float64 numpy (`M1`),
  so the probabilities the encoder and the decoder compute agree bit for bit in practice. `UnigramM1`
  is the paper's "StaticAC" model (one byte distribution for every context).
- **Quantization** (`quantize`): M1's distribution becomes integer frequencies summing to 2^β (the
  paper's precision β = 14), every byte at least 1, plus one end-of-text symbol (id 256) of frequency 1.
- **Naive arithmetic coding** (`ac_encode` / `ac_decode`): one 32-bit integer coder (Witten, Neal &
  Cleary 1987, with pending "underflow" bits) over a whole document, M1 conditioned on all bytes
  before (up to its `k`), ended by the end-of-text symbol (≤ 14 bits) so that decoding is exact.
  The bitstream is cut into `token_bits`-bit tokens (the last one zero-padded).
- **Equal-Info Windows** (`equal_info_encode` / `equal_info_decode`): bytes are added to a window
  while the window's code still fits in `window_bits` (W) bits; then the code, zero-padded to W bits,
  is emitted, and both the coder and M1's context are reset. A window's code is the shortest dyadic
  interval [a·2^-m, (a+1)·2^-m) inside the window's interval, which is tracked exactly with integers
  of `INTERVAL_BITS` bits (no renormalization is needed: a window never narrows the interval below
  2^-W). Two end-of-window rules, both from the paper:
    * `greedy` (the paper's default): the window holds the longest prefix that fits. The paper's
      decoder then decodes as far as the code allows, which can add characters that the text does not
      have (a different next character would also have fitted): the rule is not injective, and
      `equal_info_decode(..., rule="greedy")` is only the paper's best guess.
    * `delay` (the paper's Appendix A.5): among the prefixes that produce the same padded code as the
      longest one, the window holds the shortest; the decoder stops at the first prefix whose code is
      the window. This one is exactly invertible (tested), at some cost in compression.
- **Tokenizers** (`ACTokenizer`, `EqualInfoTokenizer`, `GzipTokenizer`): `encode(text) -> ids`,
  `decode(ids) -> text`, `vocab_size` = 2^token_bits, so `tokenbook.train.compare.train_lm` trains M2
  on them and scores bits per *original* byte like any other tokenizer. `encode_batch` codes many
  documents in lockstep (M1 evaluated for all of them at once) and caches the results.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
import torch

EOT = 256                      # end-of-text symbol of the naive coder (the window coder never uses it)
N_SYMBOLS = 257
PAD = 256                      # M1's "no byte here" context id (before a document or window start)
INTERVAL_BITS = 48             # resolution of the exact window interval; r * 2^β must fit in int64
STATE_BITS = 32                # the naive coder's register width
RULES = ("delay", "greedy")


# ---------------------------------------------------------------------------------------------- M1
class ByteMLP(torch.nn.Module):
    """p(next byte | last k bytes): embeddings of the k context bytes (PAD = none) -> tanh MLP -> 256 logits."""

    def __init__(self, context: int = 8, emb: int = 16, hidden: int = 192):
        super().__init__()
        self.context = int(context)
        self.emb = torch.nn.Embedding(N_SYMBOLS, emb)
        self.hidden = torch.nn.Linear(context * emb, hidden)
        self.out = torch.nn.Linear(hidden, 256)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        x = self.emb(ctx).flatten(1)
        return self.out(torch.tanh(self.hidden(x)))


class M1:
    """A trained `ByteMLP` evaluated in float64 numpy: the compressor's model.

    `probs(ctx)` takes contexts of shape (N, k) (byte ids, PAD before a start) and returns (N, 256)."""

    def __init__(self, net: ByteMLP, info: dict | None = None):
        p = {k: v.detach().double().cpu().numpy() for k, v in net.state_dict().items()}
        self.context = net.context
        self.E, self.W1, self.b1 = p["emb.weight"], p["hidden.weight"].T.copy(), p["hidden.bias"]
        self.W2, self.b2 = p["out.weight"].T.copy(), p["out.bias"]
        self.info = dict(info or {})

    @property
    def parameters(self) -> int:
        return sum(a.size for a in (self.E, self.W1, self.b1, self.W2, self.b2))

    @property
    def flops_per_byte(self) -> float:
        """Forward FLOPs to predict one byte: 2 × the multiply-adds of the two matrices."""
        return 2.0 * (self.W1.size + self.W2.size)

    def probs(self, ctx: np.ndarray) -> np.ndarray:
        ctx = np.asarray(ctx)
        if ctx.ndim != 2 or ctx.shape[1] != self.context:
            raise ValueError(f"contexts must have shape (N, {self.context}), got {ctx.shape}")
        h = np.tanh(self.E[ctx].reshape(len(ctx), -1) @ self.W1 + self.b1)
        z = h @ self.W2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


class UnigramM1:
    """The paper's StaticAC model: the same byte distribution (add-one smoothed counts) in every context."""

    def __init__(self, texts: Sequence[str], context: int = 1):
        counts = np.ones(256)
        for t in texts:
            counts += np.bincount(np.frombuffer(t.encode("utf-8"), np.uint8), minlength=256)
        self.p = counts / counts.sum()
        self.context = int(context)
        self.info = {"kind": "unigram"}
        self.parameters, self.flops_per_byte = 256, 0.0

    def probs(self, ctx: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.p, (len(ctx), 256)).copy()


def contexts(data: bytes | np.ndarray, k: int, starts: np.ndarray | None = None) -> np.ndarray:
    """(len(data), k) contexts: row j holds data[j-k:j], PAD where the index is < 0 (or < starts[j])."""
    a = np.frombuffer(bytes(data), np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data)
    a = a.astype(np.int64)
    n = len(a)
    idx = np.arange(n)[:, None] - k + np.arange(k)[None, :]
    lim = 0 if starts is None else np.asarray(starts)[:, None]
    ok = idx >= lim
    return np.where(ok, a[np.clip(idx, 0, max(n - 1, 0))] if n else 0, PAD).astype(np.int64)


def train_m1(texts: Sequence[str], *, context: int = 8, emb: int = 16, hidden: int = 192, steps: int = 1000,
             batch_size: int = 512, lr: float = 3e-3, truncate_prob: float = 0.5, seed: int = 0,
             device: str = "cpu", progress: bool = False) -> M1:
    """Train M1 on `texts` (next-byte cross-entropy, AdamW, cosine decay).

    With probability `truncate_prob` a training context is cut at a random point (the bytes before it
    become PAD), so M1 also predicts well right after a window start, where Equal-Info coding resets it."""
    if not 0.0 <= truncate_prob <= 1.0:
        raise ValueError(f"truncate_prob must be in [0, 1], got {truncate_prob}")
    data = [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts if t]
    if not data:
        raise ValueError("train_m1 needs at least one non-empty text")
    flat = np.concatenate(data)
    doc_start = np.concatenate([np.full(len(d), o) for d, o in zip(data, np.cumsum([0] + [len(d) for d in data[:-1]]))])
    ctx_all = contexts(flat, context, doc_start)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ByteMLP(context, emb, hidden).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    y_all = torch.from_numpy(flat.astype(np.int64))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="M1", leave=False)
    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(flat), batch_size)
        ctx = ctx_all[idx].copy()
        cut = rng.random(batch_size) < truncate_prob
        keep = rng.integers(0, context + 1, batch_size)          # bytes of context kept when cut
        ctx[cut[:, None] & (np.arange(context)[None, :] < (context - keep)[:, None])] = PAD
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(ctx).to(device)), y_all[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(bits=f"{loss.item() / math.log(2):.3f}")
    if bar is not None:
        bar.close()
    info = {"kind": "mlp", "context": context, "emb": emb, "hidden": hidden, "steps": steps,
            "batch_size": batch_size, "train_bytes": int(len(flat)),
            "final_train_bits": float(np.mean(losses[-20:]) / math.log(2))}
    return M1(net.cpu().eval(), info)


# ------------------------------------------------------------------------------------ quantization
def quantize(probs: np.ndarray, precision: int = 14) -> np.ndarray:
    """Cumulative integer frequencies (N, 258) summing to 2^precision over 256 bytes + end-of-text.

    Every byte gets 1 + floor(p · (2^β − 257)), end-of-text gets 1, the rounding remainder goes to the
    most likely byte. So no byte is ever impossible and every code is decodable."""
    p = np.asarray(probs, np.float64)
    total = 1 << precision
    if total <= 4 * N_SYMBOLS:
        raise ValueError(f"precision {precision} is too small for {N_SYMBOLS} symbols")
    f = np.ones((len(p), N_SYMBOLS), np.int64)
    f[:, :256] += np.floor(p * (total - N_SYMBOLS)).astype(np.int64)
    f[np.arange(len(p)), p.argmax(axis=1)] += total - f.sum(axis=1)
    out = np.zeros((len(p), N_SYMBOLS + 1), np.int64)
    np.cumsum(f, axis=1, out=out[:, 1:])
    return out


def code_length_bits(cum: np.ndarray, symbols: np.ndarray, precision: int = 14) -> np.ndarray:
    """-log2 of each symbol's quantized probability: the ideal code length the coder approaches."""
    rows = np.arange(len(symbols))
    return precision - np.log2((cum[rows, symbols + 1] - cum[rows, symbols]).astype(np.float64))


# ------------------------------------------------------------------------ naive arithmetic coding
_TOP = (1 << STATE_BITS) - 1
_HALF = 1 << (STATE_BITS - 1)
_QUARTER = 1 << (STATE_BITS - 2)


def ac_encode(ranges: Sequence[tuple[int, int]], precision: int = 14) -> list[int]:
    """Bits of the integer arithmetic code of symbols given as cumulative ranges [lo, hi) out of 2^β."""
    low, high, pending, bits = 0, _TOP, 0, []

    def emit(b):
        nonlocal pending
        bits.append(b)
        bits.extend([1 - b] * pending)
        pending = 0

    for cl, ch in ranges:
        span = high - low + 1
        high = low + ((span * int(ch)) >> precision) - 1
        low = low + ((span * int(cl)) >> precision)
        while True:
            if high < _HALF:
                emit(0)
            elif low >= _HALF:
                emit(1)
                low -= _HALF
                high -= _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                pending += 1
                low -= _QUARTER
                high -= _QUARTER
            else:
                break
            low <<= 1
            high = (high << 1) | 1
    pending += 1                       # two more bits select a point inside [low, high] (zeros follow)
    emit(0 if low < _QUARTER else 1)
    return bits


def ac_decode(bits: Sequence[int], next_cum: Callable[[bytearray], np.ndarray], precision: int = 14,
              max_symbols: int = 10 ** 7) -> bytes:
    """Inverse of `ac_encode` for a stream ended by EOT: `next_cum(decoded so far)` gives the (258,)
    cumulative frequencies M1 assigns to the next symbol. Bits past the end read as zeros."""
    nb = len(bits)
    pos = 0

    def read():
        nonlocal pos
        b = bits[pos] if pos < nb else 0
        pos += 1
        return b

    low, high, value = 0, _TOP, 0
    for _ in range(STATE_BITS):
        value = (value << 1) | read()
    out = bytearray()
    for _ in range(max_symbols):
        cum = next_cum(out)
        span = high - low + 1
        target = (((value - low + 1) << precision) - 1) // span
        s = int(np.searchsorted(cum, target, side="right")) - 1
        high = low + ((span * int(cum[s + 1])) >> precision) - 1
        low = low + ((span * int(cum[s])) >> precision)
        if s == EOT:
            return bytes(out)
        out.append(s)
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low -= _HALF
                high -= _HALF
                value -= _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                low -= _QUARTER
                high -= _QUARTER
                value -= _QUARTER
            else:
                break
            low <<= 1
            high = (high << 1) | 1
            value = (value << 1) | read()
    raise ValueError(f"no end-of-text symbol within {max_symbols} symbols: not a complete stream")


def ac_encode_documents(datas: Sequence[bytes], m1, precision: int = 14, chunk: int = 65536) -> list[list[int]]:
    """Bits of each document, coded whole with M1 conditioned on everything before (up to its context)."""
    out = []
    for d in datas:
        cl, ch = [], []
        ctx = contexts(d, m1.context)
        sym = np.frombuffer(d, np.uint8).astype(np.int64)
        for s in range(0, len(d), chunk):
            cum = quantize(m1.probs(ctx[s:s + chunk]), precision)
            rows = np.arange(len(cum))
            cl.append(cum[rows, sym[s:s + chunk]])
            ch.append(cum[rows, sym[s:s + chunk] + 1])
        total = 1 << precision
        cl = np.concatenate(cl + [np.array([total - 1])]).tolist()   # ... then end-of-text
        ch = np.concatenate(ch + [np.array([total])]).tolist()
        out.append(ac_encode(zip(cl, ch), precision))
    return out


def ac_decode_document(bits: Sequence[int], m1, precision: int = 14) -> bytes:
    k = m1.context

    def next_cum(done: bytearray):
        ctx = np.full((1, k), PAD, np.int64)
        tail = list(done[-k:])
        if tail:
            ctx[0, k - len(tail):] = tail
        return quantize(m1.probs(ctx), precision)[0]
    return ac_decode(bits, next_cum, precision)


# ------------------------------------------------------------------------------ equal-info windows
def narrow(lo: int, r: int, cl: int, ch: int, precision: int) -> tuple[int, int]:
    """The sub-interval of [lo, lo + r) for a symbol with cumulative range [cl, ch) out of 2^β.
    Sub-intervals of all symbols tile the parent exactly (floor of r·cum / 2^β at both ends)."""
    a = (r * cl) >> precision
    return lo + a, ((r * ch) >> precision) - a


def window_code(lo: int, r: int, window_bits: int) -> int | None:
    """The window's W-bit value: the shortest dyadic interval inside [lo, lo + r) (out of 2^P), leftmost
    among the shortest, zero-padded to W bits; None if it needs more than W bits."""
    if r <= 0:
        return None
    P = INTERVAL_BITS
    m0 = max(0, P - r.bit_length() + 1)      # the level whose step 2^(P-m) is the largest power of 2 <= r
    for m in (m0, m0 + 1):                    # level m0 + 1 (step <= r/2) always fits
        if m > window_bits:
            return None
        step = 1 << (P - m)
        a = -(-lo // step)
        if (a + 1) * step <= lo + r:
            return a << (window_bits - m)
    raise AssertionError("unreachable: a dyadic interval of step <= r/2 always fits")


def check_window_settings(window_bits: int, precision: int, rule: str, max_window: int) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown end-of-window rule {rule!r}; valid: {', '.join(RULES)}")
    if window_bits < precision + 1:
        raise ValueError(f"window_bits={window_bits} < precision + 1 = {precision + 1}: a rare byte "
                         f"(probability 2^-{precision}) would not fit in an empty window")
    if window_bits + precision > 62 or window_bits > INTERVAL_BITS - precision - 2:
        raise ValueError(f"window_bits={window_bits} is too large for {INTERVAL_BITS}-bit intervals")
    if max_window < 1:
        raise ValueError(f"max_window must be >= 1, got {max_window}")


def equal_info_encode(datas: Sequence[bytes], m1, *, window_bits: int = 16, precision: int = 14,
                      rule: str = "delay", max_window: int = 64, progress: bool = False
                      ) -> tuple[list[list[int]], list[list[int]], dict]:
    """Equal-Info-Window codes (one W-bit int per window) of every document, the number of bytes each
    window holds, and coding statistics.

    All documents are coded in lockstep: at each step M1 predicts, in one batch, the next byte of every
    document given the bytes of that document's current window; the (exact, integer) interval update
    and the end-of-window decision then run per document."""
    check_window_settings(window_bits, precision, rule, max_window)
    arrays = [np.frombuffer(bytes(d), np.uint8) for d in datas]
    n = len(arrays)
    lens = np.array([len(a) for a in arrays], np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    flat = np.concatenate(arrays + [np.zeros(1, np.uint8)]).astype(np.int64)
    k, full = m1.context, 1 << INTERVAL_BITS
    start, cur = np.zeros(n, np.int64), np.zeros(n, np.int64)
    lo, r = [0] * n, [full] * n
    codes: list[list[int]] = [[] for _ in range(n)]
    out: list[list[int]] = [[] for _ in range(n)]
    held: list[list[int]] = [[] for _ in range(n)]
    stats = {"windows": 0, "evaluations": 0, "delayed_bytes": 0, "capped_windows": 0}
    active = [i for i in range(n) if lens[i] > 0]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(lens.sum()), desc=f"equal-info ({rule})", leave=False)
    while active:
        act = np.asarray(active)
        pos = start[act] + cur[act]
        rel = pos[:, None] - k + np.arange(k)[None, :]
        ctx = np.where(rel >= start[act][:, None], flat[offs[act][:, None] + np.maximum(rel, 0)], PAD)
        cum = quantize(m1.probs(ctx), precision)
        sym = flat[offs[act] + pos]
        rows = np.arange(len(act))
        cls, chs = cum[rows, sym].tolist(), cum[rows, sym + 1].tolist()
        stats["evaluations"] += len(act)
        still, done_bytes = [], 0
        for t, i in enumerate(active):
            l2, r2 = narrow(lo[i], r[i], cls[t], chs[t], precision)
            v = window_code(l2, r2, window_bits) if cur[i] < max_window else None
            if v is not None:
                lo[i], r[i] = l2, r2
                codes[i].append(v)
                cur[i] += 1
                if start[i] + cur[i] < lens[i]:
                    still.append(i)
                    continue
            elif cur[i] >= max_window:
                stats["capped_windows"] += 1
            # close the window: emit the code of its longest prefix; `delay` keeps only the shortest
            # prefix with that same code (the rest is coded again in the next window)
            c = codes[i]
            take = len(c) if rule == "greedy" else c.index(c[-1]) + 1
            stats["delayed_bytes"] += len(c) - take
            out[i].append(c[-1])
            held[i].append(take)
            stats["windows"] += 1
            start[i] += take
            done_bytes += take
            cur[i], lo[i], r[i], codes[i] = 0, 0, full, []
            if start[i] < lens[i]:
                still.append(i)
        active = still
        if bar is not None:
            bar.update(done_bytes)
    if bar is not None:
        bar.close()
    stats["bytes"] = int(lens.sum())
    stats["bytes_per_window"] = stats["bytes"] / max(1, stats["windows"])
    return out, held, stats


def equal_info_decode(windows: Sequence[int], m1, *, window_bits: int = 16, precision: int = 14,
                      rule: str = "delay", max_window: int = 64) -> bytes:
    """Bytes of a sequence of window codes. `delay`: exact. `greedy`: the paper's look-ahead decoder
    (decode while the code still fits, keep the longest prefix whose code is the window)."""
    check_window_settings(window_bits, precision, rule, max_window)
    k, P = m1.context, INTERVAL_BITS
    out = bytearray()
    for v in windows:
        v = int(v)
        if not 0 <= v < (1 << window_bits):
            raise ValueError(f"window code {v} does not fit in {window_bits} bits")
        point = v << (P - window_bits)
        lo, r, chars, best = 0, 1 << P, bytearray(), None
        while len(chars) < max_window:
            ctx = np.full((1, k), PAD, np.int64)
            tail = list(chars[-k:])
            if tail:
                ctx[0, k - len(tail):] = tail
            cum = quantize(m1.probs(ctx), precision)[0]
            starts = lo + ((r * cum) >> precision)         # int64 is enough: r * 2^β < 2^62
            s = int(np.searchsorted(starts, point, side="right")) - 1
            if s >= 256:
                break                                       # the point lies in the end-of-text slot
            lo, r = narrow(lo, r, int(cum[s]), int(cum[s + 1]), precision)
            chars.append(s)
            code = window_code(lo, r, window_bits)
            if code is None:
                break
            if code == v:
                best = len(chars)
                if rule == "delay":
                    break
        if best is None:
            raise ValueError(f"window code {v:#x} is not the code of any byte string: not a valid stream")
        out += chars[:best]
    return bytes(out)


# ---------------------------------------------------------------------------------- bits <-> tokens
def bits_to_tokens(bits: Sequence[int], token_bits: int) -> list[int]:
    """Big-endian groups of `token_bits` bits; the last group is padded with zeros."""
    b = np.asarray(bits, np.int64)
    pad = (-len(b)) % token_bits
    b = np.concatenate([b, np.zeros(pad, np.int64)]).reshape(-1, token_bits)
    return (b @ (1 << np.arange(token_bits - 1, -1, -1, dtype=np.int64))).tolist()


def tokens_to_bits(tokens: Sequence[int], token_bits: int) -> list[int]:
    t = np.asarray(tokens, np.int64)
    if len(t) and (t.min() < 0 or t.max() >= (1 << token_bits)):
        raise ValueError(f"token ids must be in [0, {1 << token_bits})")
    return ((t[:, None] >> np.arange(token_bits - 1, -1, -1)) & 1).reshape(-1).tolist()


def windows_to_tokens(windows: Sequence[int], window_bits: int, token_bits: int) -> list[int]:
    if window_bits % token_bits:
        raise ValueError(f"window_bits={window_bits} is not a multiple of token_bits={token_bits}")
    per = window_bits // token_bits
    mask = (1 << token_bits) - 1
    return [(w >> (token_bits * (per - 1 - j))) & mask for w in windows for j in range(per)]


def tokens_to_windows(tokens: Sequence[int], window_bits: int, token_bits: int) -> list[int]:
    per = window_bits // token_bits
    if len(tokens) % per:
        raise ValueError(f"{len(tokens)} tokens are not a whole number of {per}-token windows")
    out = []
    for j in range(0, len(tokens), per):
        w = 0
        for t in tokens[j:j + per]:
            w = (w << token_bits) | int(t)
        out.append(w)
    return out


# ------------------------------------------------------------------------------------- tokenizers
def _in_parallel(fn, datas: list[bytes], workers: int, *args) -> list:
    """fn(datas, *args) -> list, over `workers` processes (documents in interleaved shards), else inline."""
    if workers <= 1 or len(datas) < 2 * workers:
        return fn(datas, *args)
    shards = [datas[w::workers] for w in range(workers)]
    parts = list(_pool(workers).map(fn, shards, *[[a] * workers for a in args]))
    out = [None] * len(datas)
    for w, part in enumerate(parts):
        out[w::workers] = part
    return out


_POOLS: dict = {}


def _pool(workers: int):
    """One pool of `workers` spawned processes per session (starting one costs a torch import each)."""
    if workers not in _POOLS:
        import atexit
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        atexit.register(_POOLS[workers].shutdown)
    return _POOLS[workers]


def _ac_codes(datas, m1, precision):
    return [np.asarray(b, np.uint8) for b in ac_encode_documents(datas, m1, precision)]


def _equal_info_codes(datas, m1, window_bits, precision, rule, max_window):
    wins, held, st = equal_info_encode(datas, m1, window_bits=window_bits, precision=precision, rule=rule,
                                       max_window=max_window)
    return [(np.asarray(w, np.int64), np.asarray(h, np.int32)) for w, h in zip(wins, held)]


def _v(token_bits: int) -> str:
    return "65k" if token_bits == 16 else str(1 << token_bits)


class StreamTokenizer:
    """A compressor seen as a tokenizer: text -> token ids of `token_bits` bits (vocabulary 2^bits).

    The compressed code of each text is cached; `encode_batch` fills the cache for many texts at once
    (in `workers` processes), and `with_token_bits` gives the same code cut into other tokens (sharing
    the cache: AC[v=256] and AC[v=65k] are one bitstream)."""

    def __init__(self, name: str, token_bits: int, workers: int = 1):
        if token_bits not in (8, 16):
            raise ValueError(f"token_bits must be 8 or 16, got {token_bits}")
        self.name, self.token_bits, self.workers = name, int(token_bits), int(workers)
        self.vocab_size = 1 << self.token_bits
        self._codes: dict[str, object] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def _compress(self, datas: list[bytes]) -> list:
        raise NotImplementedError

    def _tokens(self, code) -> list[int]:
        raise NotImplementedError

    def with_token_bits(self, token_bits: int, name: str | None = None) -> "StreamTokenizer":
        import copy
        other = copy.copy(self)            # shares the code cache (and M1)
        StreamTokenizer.__init__(other, name or self.name.replace(f"v={_v(self.token_bits)}", f"v={_v(token_bits)}"),
                                 token_bits, self.workers)
        other._codes = self._codes
        return other

    def compress(self, texts: Sequence[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._codes))
        if todo:
            for t, c in zip(todo, self._compress([t.encode("utf-8") for t in todo])):
                self._codes[t] = c

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        self.compress(texts)
        return [self._tokens(self._codes[t]) for t in texts]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.encode_batch([text])[0]

    def code_bits(self, text: str) -> int:
        """Bits of the compressed code of `text` before it is cut into tokens."""
        raise NotImplementedError


class ACTokenizer(StreamTokenizer):
    """Naive arithmetic coding of each whole document with M1 (AC[v=2^bits] in the paper)."""

    def __init__(self, m1, token_bits: int = 8, precision: int = 14, name: str | None = None, workers: int = 1):
        super().__init__(name or f"AC[v={_v(token_bits)}]", token_bits, workers)
        self.m1, self.precision = m1, int(precision)

    def _compress(self, datas):
        return _in_parallel(_ac_codes, datas, self.workers, self.m1, self.precision)

    def _tokens(self, code):
        return bits_to_tokens(code, self.token_bits)

    def code_bits(self, text):
        self.compress([text])
        return len(self._codes[text])

    def decode(self, ids) -> str:
        return ac_decode_document(tokens_to_bits(list(ids), self.token_bits), self.m1,
                                  self.precision).decode("utf-8", errors="replace")


class EqualInfoTokenizer(StreamTokenizer):
    """Equal-Info Windows of `window_bits` bits cut into `token_bits`-bit tokens (EqualInfoAC[b, v])."""

    def __init__(self, m1, window_bits: int = 16, token_bits: int = 8, precision: int = 14,
                 rule: str = "delay", max_window: int = 64, name: str | None = None, workers: int = 1):
        check_window_settings(window_bits, precision, rule, max_window)
        if window_bits % token_bits:
            raise ValueError(f"window_bits={window_bits} is not a multiple of token_bits={token_bits}")
        tag = "" if rule == "delay" else f", {rule}"
        super().__init__(name or f"EqualInfoAC[b={window_bits}, v={_v(token_bits)}{tag}]", token_bits, workers)
        self.m1, self.window_bits, self.precision = m1, int(window_bits), int(precision)
        self.rule, self.max_window = rule, int(max_window)

    def _compress(self, datas):
        return _in_parallel(_equal_info_codes, datas, self.workers, self.m1, self.window_bits, self.precision,
                            self.rule, self.max_window)

    def _tokens(self, code):
        return windows_to_tokens(code[0].tolist(), self.window_bits, self.token_bits)

    def code_bits(self, text):
        self.compress([text])
        return len(self._codes[text][0]) * self.window_bits

    def windows(self, text: str) -> list[int]:
        self.compress([text])
        return self._codes[text][0].tolist()

    def window_bytes(self, text: str) -> list[int]:
        """How many bytes of `text` each of its windows holds."""
        self.compress([text])
        return self._codes[text][1].tolist()

    def stats(self, texts: Sequence[str]) -> dict:
        """Windows, bytes per window, and the share of windows that hold no more than 1, 2, ... bytes."""
        self.compress(texts)
        held = np.concatenate([self._codes[t][1] for t in texts]) if texts else np.zeros(0)
        return {"windows": int(len(held)), "bytes": int(held.sum()),
                "bytes_per_window": float(held.mean()) if len(held) else 0.0,
                "window_bytes_histogram": np.bincount(held.astype(np.int64)).tolist() if len(held) else []}

    def decode(self, ids) -> str:
        return equal_info_decode(tokens_to_windows(list(ids), self.window_bits, self.token_bits), self.m1,
                                 window_bits=self.window_bits, precision=self.precision, rule=self.rule,
                                 max_window=self.max_window).decode("utf-8", errors="replace")


class GzipTokenizer(StreamTokenizer):
    """A zlib (DEFLATE) stream of each document, header and checksum included, cut into tokens."""

    def __init__(self, token_bits: int = 8, level: int = -1, name: str | None = None):
        super().__init__(name or f"GZip[v={_v(token_bits)}]", token_bits)
        self.level = int(level)

    def _compress(self, datas):
        return [zlib.compress(d, self.level) for d in datas]

    def _tokens(self, code):
        if self.token_bits == 16:
            return np.frombuffer(code + b"\0" * (len(code) % 2), ">u2").astype(np.int64).tolist()
        return list(code)

    def code_bits(self, text):
        self.compress([text])
        return 8 * len(self._codes[text])

    def decode(self, ids) -> str:
        ids = list(ids)
        raw = bytes(ids) if self.token_bits == 8 else np.asarray(ids, ">u2").tobytes()
        return zlib.decompressobj().decompress(raw).decode("utf-8", errors="replace")

def window_decode_errors(tok: EqualInfoTokenizer, texts: Sequence[str]) -> dict:
    """Decode every window of `texts` on its own with `tok`'s rule and compare it with the bytes it was
    made from: how often the decoder is wrong (never, for `delay`; the paper's `greedy` rule can be)."""
    n = wrong = docs_wrong = extra = 0
    for t in texts:
        d = t.encode("utf-8")
        wins = tok.windows(t)
        pos, bad = 0, 0
        for w, h in zip(wins, tok.window_bytes(t)):
            try:
                got = equal_info_decode([w], tok.m1, window_bits=tok.window_bits, precision=tok.precision,
                                        rule=tok.rule, max_window=tok.max_window)
            except ValueError:
                got = None
            if got != d[pos:pos + h]:
                bad += 1
                extra += 0 if got is None else len(got) - h
            pos += h
        n, wrong, docs_wrong = n + len(wins), wrong + bad, docs_wrong + (bad > 0)
    return {"windows": n, "wrong_windows": wrong, "wrong_fraction": wrong / max(1, n),
            "documents": len(texts), "documents_wrong": docs_wrong, "extra_bytes_decoded": extra}
