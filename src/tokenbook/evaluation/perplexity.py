"""Perplexity and bits per byte of a causal LM over texts, overall and by context length.

Every text is encoded without special tokens and preceded by one start token (BOS, else EOS), so
every token of the text is predicted and the scored tokens cover exactly the text's UTF-8 bytes:

    bits/byte = Σ_tokens -ln p(token | context) / ln 2 / Σ_texts len(text.encode("utf-8"))

which compares models with different tokenizers (a tokenizer with longer tokens has fewer, harder
predictions; per byte the two are on one scale).

Windows. A sequence longer than `max_length` is scored in windows of `max_length` tokens whose
ends advance by `stride`; each window scores only the targets its predecessor did not, so every
token is scored exactly once. The default stride, max_length - 1, gives back-to-back windows (the
context restarts at each window); a smaller stride is the sliding-window evaluation, in which
every token after the first window sees at least max_length - stride tokens of context.
`context` records, per scored token, how many tokens the model saw before it (window start to it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


def bits_per_byte(nll_nats_sum: float, n_bytes: int) -> float:
    return float(nll_nats_sum) / LN2 / n_bytes


@dataclass
class LMScores:
    nll: np.ndarray          # nats, one per scored token
    context: np.ndarray      # tokens visible before each scored token (including the start token)
    position: np.ndarray     # 0-based index of the token within its text
    text_index: np.ndarray   # which text each scored token belongs to
    text_bytes: np.ndarray   # UTF-8 bytes of each text

    @property
    def n_tokens(self) -> int:
        return len(self.nll)

    @property
    def n_bytes(self) -> int:
        return int(self.text_bytes.sum())

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean())

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.mean_nll))

    @property
    def bits_per_token(self) -> float:
        return self.mean_nll / LN2

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll.sum(), self.n_bytes)

    def per_text_bits_per_byte(self) -> np.ndarray:
        """One value per text: the unit to bootstrap over (texts are the independent samples)."""
        sums = np.bincount(self.text_index, weights=self.nll, minlength=len(self.text_bytes))
        return sums / LN2 / np.maximum(self.text_bytes, 1)

    def by_bucket(self, edges=None, key: str = "context") -> list[dict]:
        """Mean loss per bucket [lo, hi) of `key` ("context" or "position"); powers of 2 by default."""
        values = getattr(self, key)
        if edges is None:
            top = int(values.max()) + 1 if len(values) else 1
            edges = [0] + [2 ** k for k in range(0, max(1, math.ceil(math.log2(top))) + 1)]
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (values >= lo) & (values < hi)
            if m.any():
                mean = float(self.nll[m].mean())
                rows.append({"lo": int(lo), "hi": int(hi), "n": int(m.sum()), "mean_nll": mean,
                             "perplexity": math.exp(mean), "bits_per_token": mean / LN2})
        return rows

    def summary(self) -> dict:
        return {"n_texts": len(self.text_bytes), "n_tokens": self.n_tokens, "n_bytes": self.n_bytes,
                "mean_nll": self.mean_nll, "perplexity": self.perplexity,
                "bits_per_token": self.bits_per_token, "bits_per_byte": self.bits_per_byte}


def _start_id(tokenizer) -> int:
    for name in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start each text with")


def windows(length: int, max_length: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, first scored index) for a sequence of `length` tokens; targets 1..length-1 once each."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    stride = max_length - 1 if stride is None else stride
    if not 1 <= stride <= max_length - 1:
        raise ValueError(f"stride must be in [1, max_length - 1] = [1, {max_length - 1}], got {stride}")
    out, end = [], min(length, max_length)
    out.append((0, end, 1))
    while end < length:
        new_end = min(length, end + stride)
        out.append((max(0, new_end - max_length), new_end, end))
        end = new_end
    return out


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], *, max_length: int = 1024, stride: int | None = None,
                batch_size: int = 4, device: str = "cpu", max_tokens_per_text: int | None = None) -> LMScores:
    """Per-token negative log-likelihoods of `texts` under `model` (see the module docstring)."""
    start = _start_id(tokenizer)
    seqs, text_bytes = [], []
    for t in texts:
        ids = list(tokenizer.encode(t, add_special_tokens=False))
        if max_tokens_per_text is not None and len(ids) > max_tokens_per_text:
            ids = ids[:max_tokens_per_text]  # bytes then follow the kept tokens
            t = tokenizer.decode(ids)
        seqs.append([start] + ids)
        text_bytes.append(len(t.encode("utf-8")))
    jobs = [(i, s, e, f) for i, seq in enumerate(seqs) for s, e, f in windows(len(seq), max_length, stride)
            if e - f > 0]
    jobs.sort(key=lambda j: j[2] - j[1])  # similar lengths together: less padding
    nll, ctx, pos, tix = [], [], [], []
    was_training = model.training
    model.eval()
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        width = max(e - s for _, s, e, _ in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (i, s, e, _) in enumerate(chunk):
            x[r, :e - s] = torch.tensor(seqs[i][s:e])
            mask[r, :e - s] = 1
        x, mask = x.to(device), mask.to(device)
        with (torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda")
              else torch.autocast("cpu", enabled=False)):
            logits = model(input_ids=x, attention_mask=mask).logits
        for r, (i, s, e, f) in enumerate(chunk):
            lo, hi = f - s, e - s                       # target indices within the window
            lp = torch.log_softmax(logits[r, lo - 1:hi - 1].float(), dim=-1)
            tok_nll = -lp.gather(-1, x[r, lo:hi, None]).squeeze(-1)
            nll.append(tok_nll.cpu().numpy())
            ctx.append(np.arange(lo, hi))
            pos.append(np.arange(f, e) - 1)             # minus the start token
            tix.append(np.full(hi - lo, i))
    model.train(was_training)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return LMScores(nll=cat(nll, np.float64), context=cat(ctx, np.int64), position=cat(pos, np.int64),
                    text_index=cat(tix, np.int64), text_bytes=np.asarray(text_bytes, dtype=np.int64))
