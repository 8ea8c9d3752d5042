"""Prepacking (Zhao et al., 2024, arXiv:2404.09529): prefill many prompts without padding.

Padded batched prefill computes every row at the length of the batch's longest prompt. Prepacking
bin-packs the prompts into rows of that same capacity, restarts the position ids at 0 for every
prompt, and masks attention block-diagonally so no prompt sees another:

    mask[r, i, j] = (seq[r, i] == seq[r, j]) and (j <= i) and seq[r, j] >= 0

Each prompt's keys, values and logits are then those of running it alone. Its cost is the real
tokens (plus the leftover of each bin) instead of batch × max length. A variable-length variant
drops the rows altogether: every prompt of the batch is laid end to end in one row whose sequence
boundaries (`cu_seqlens`) go to the varlen attention kernel (`tokenbook.kernels.varlen_attention`).

Shapes: R rows, C row capacity (tokens), N prompts, V vocabulary. Book chapter: `prepacking`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


# ---- prompts with controlled length distributions --------------------------------------------

def sample_lengths(kind: str, n: int, mean: float, max_len: int, rng: np.random.Generator, *,
                   lo: float = 0.5, hi: float = 1.5, sigma: float = 1.0, min_len: int = 4) -> np.ndarray:
    """n prompt lengths with the given mean (before clipping to [min_len, max_len]).

    kind: "uniform" draws U[lo·mean, hi·mean]; "lognormal" has mean `mean` and log-sd `sigma`
    (a long tail: a few long prompts among many short ones); "constant" is all `mean`.
    """
    if kind == "uniform":
        x = rng.uniform(lo * mean, hi * mean, n)
    elif kind == "lognormal":
        x = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n)
    elif kind == "constant":
        x = np.full(n, float(mean))
    else:
        raise ValueError(f"unknown length distribution {kind!r}; valid: uniform, lognormal, constant")
    return np.clip(np.round(x), min_len, max_len).astype(int)


def cut_prompts(token_stream: list[int], lengths, rng: np.random.Generator) -> list[list[int]]:
    """Slices of a long token stream (real text) with the requested lengths, at random offsets."""
    stream = list(token_stream)
    if max(lengths) > len(stream):
        raise ValueError(f"token stream of {len(stream)} tokens is shorter than the longest prompt {max(lengths)}")
    starts = rng.integers(0, len(stream) - np.asarray(lengths) + 1)
    return [stream[s:s + int(n)] for s, n in zip(starts, lengths)]


# ---- bin packing -----------------------------------------------------------------------------

def first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Indices of items grouped into bins of total length ≤ capacity (first-fit decreasing).

    FFD uses at most 11/9·OPT + 6/9 bins; items longer than the capacity are an error.
    """
    lengths = [int(x) for x in lengths]
    if any(x > capacity for x in lengths):
        raise ValueError(f"an item of length {max(lengths)} does not fit a bin of capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


# ---- batch layouts ---------------------------------------------------------------------------

@dataclass
class Batch:
    """Model inputs for one forward pass and where each prompt's tokens landed.

    `where[k] = (row, start)` for prompt k of the batch; its tokens occupy
    [start, start + len_k) of that row. Exactly one of attention_mask / cu_seqlens is used.
    """
    input_ids: torch.Tensor                  # [R, C]
    position_ids: torch.Tensor               # [R, C]
    attention_mask: torch.Tensor | None      # [R, C] padding mask, or [R, 1, C, C] block-diagonal bool
    where: list[tuple[int, int]]
    lengths: list[int]
    cu_seqlens: torch.Tensor | None = None   # [N+1] int32 for the varlen layout (R = 1)
    max_seqlen: int | None = None

    @property
    def computed_tokens(self) -> int:
        """Token positions the model actually computes (real tokens + padding)."""
        return int(self.input_ids.numel())

    def model_kwargs(self) -> dict:
        kw = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.cu_seqlens is not None:
            kw.update(cu_seqlens=self.cu_seqlens, max_seqlen=self.max_seqlen)
        else:
            kw["attention_mask"] = self.attention_mask
        return kw

    def to(self, device) -> "Batch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(mv(self.input_ids), mv(self.position_ids), mv(self.attention_mask), self.where,
                     self.lengths, mv(self.cu_seqlens), self.max_seqlen)


def padded(prompts: list[list[int]], pad_id: int) -> Batch:
    """The baseline: one row per prompt, right-padded to the longest prompt."""
    lengths = [len(p) for p in prompts]
    C = max(lengths)
    ids = torch.full((len(prompts), C), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), C), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, :len(p)] = torch.tensor(p)
        mask[r, :len(p)] = 1
    pos = torch.arange(C).expand(len(prompts), C).clone()
    return Batch(ids, pos, mask, [(r, 0) for r in range(len(prompts))], lengths)


def block_diagonal_causal_mask(seq_ids: torch.Tensor) -> torch.Tensor:
    """[R, C] sequence ids (−1 = padding) → [R, 1, C, C] bool mask, True where attention is allowed.

    Padding rows attend to themselves only, so no softmax row is empty (their outputs are unused).
    """
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    causal = torch.ones(seq_ids.shape[1], seq_ids.shape[1], dtype=torch.bool).tril()
    mask = same & causal & (seq_ids[:, None, :] >= 0)
    pad = seq_ids < 0
    eye = torch.eye(seq_ids.shape[1], dtype=torch.bool)
    mask = mask | (pad[:, :, None] & eye)
    return mask[:, None]


def prepacked(prompts: list[list[int]], pad_id: int, capacity: int | None = None) -> Batch:
    """Prepacking: FFD bins of capacity (default: the longest prompt), restarted positions, block mask."""
    lengths = [len(p) for p in prompts]
    C = capacity or max(lengths)
    bins = first_fit_decreasing(lengths, C)
    ids = torch.full((len(bins), C), pad_id, dtype=torch.long)
    pos = torch.zeros((len(bins), C), dtype=torch.long)
    seq = torch.full((len(bins), C), -1, dtype=torch.long)
    where: list[tuple[int, int]] = [(0, 0)] * len(prompts)
    for r, members in enumerate(bins):
        start = 0
        for k in members:
            n = lengths[k]
            ids[r, start:start + n] = torch.tensor(prompts[k])
            pos[r, start:start + n] = torch.arange(n)
            seq[r, start:start + n] = k
            where[k] = (r, start)
            start += n
    return Batch(ids, pos, block_diagonal_causal_mask(seq), where, lengths)


def varlen(prompts: list[list[int]]) -> Batch:
    """All prompts end to end in one row; boundaries in cu_seqlens (no padding at all)."""
    lengths = [len(p) for p in prompts]
    ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long)[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.zeros(len(prompts) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    where = [(0, int(cu[k])) for k in range(len(prompts))]
    return Batch(ids, pos, None, where, lengths, cu, max(lengths))


LAYOUTS = ("padded", "prepacked", "varlen")


def make_batch(layout: str, prompts: list[list[int]], pad_id: int) -> Batch:
    if layout == "padded":
        return padded(prompts, pad_id)
    if layout == "prepacked":
        return prepacked(prompts, pad_id)
    if layout == "varlen":
        return varlen(prompts)
    raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


# ---- running the model -----------------------------------------------------------------------

def _attention_for(layout: str, model):
    from contextlib import nullcontext
    if layout == "varlen":
        from ..attention import VARLEN, use_attention
        return use_attention(model, VARLEN)
    return nullcontext()


@torch.inference_mode()
def prefill_logits(model, batch: Batch, layout: str, *, all_positions: bool = False) -> list[torch.Tensor]:
    """Run one forward pass; return per prompt its last-token logits [V] (or all positions [L, V])."""
    with _attention_for(layout, model):
        out = model(**batch.model_kwargs(), logits_to_keep=0)
    logits = out.logits
    res = []
    for (r, s), n in zip(batch.where, batch.lengths):
        res.append(logits[r, s:s + n].float() if all_positions else logits[r, s + n - 1].float())
    return res


@torch.inference_mode()
def prefill(model, batch: Batch, layout: str) -> None:
    """Timed path: the forward pass only, logits for the last position of each row."""
    with _attention_for(layout, model):
        model(**batch.model_kwargs(), logits_to_keep=1)


def batches(prompts: list[list[int]], batch_size: int, *, sort: bool = False) -> list[list[int]]:
    """Indices of prompts grouped into consecutive batches (optionally length-sorted first)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if sort else list(range(len(prompts)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_stats(prompts: list[list[int]], groups: list[list[int]], layout: str, pad_id: int = 0) -> dict:
    """Real tokens vs token positions computed for a layout over all batches."""
    real = sum(len(p) for p in prompts)
    computed = sum(make_batch(layout, [prompts[i] for i in g], pad_id).computed_tokens for g in groups)
    return {"real_tokens": real, "computed_tokens": computed, "waste": 1 - real / computed}


# ---- KV caches: unpack a packed prefill into per-prompt caches, then decode ------------------

@torch.inference_mode()
def packed_caches(model, batch: Batch, layout: str):
    """Prefill `batch` with caching on; return (per-prompt DynamicCache list, last logits per prompt)."""
    from transformers import DynamicCache
    kw = batch.model_kwargs()
    kw["use_cache"] = True
    with _attention_for(layout, model):
        out = model(**kw, logits_to_keep=0)
    caches = []
    for (r, s), n in zip(batch.where, batch.lengths):
        cache = DynamicCache()
        for li, layer in enumerate(out.past_key_values.layers):
            cache.update(layer.keys[r:r + 1, :, s:s + n].clone(), layer.values[r:r + 1, :, s:s + n].clone(), li)
        caches.append(cache)
    last = [out.logits[r, s + n - 1].float() for (r, s), n in zip(batch.where, batch.lengths)]
    return caches, last


@torch.inference_mode()
def greedy_continue(model, cache, last_logits: torch.Tensor, prompt_len: int, n_new: int) -> list[int]:
    """Greedy decoding from a prefilled cache: the first token comes from the prefill's logits."""
    device = next(model.parameters()).device
    tokens = [int(last_logits.argmax())]
    for i in range(n_new - 1):
        ids = torch.tensor([[tokens[-1]]], device=device)
        pos = torch.tensor([[prompt_len + i]], device=device)
        out = model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


@torch.inference_mode()
def single_prompt_reference(model, prompt: list[int], device, *, all_positions: bool = False):
    """The ground truth: the prompt alone, no padding, no packing."""
    ids = torch.tensor([prompt], device=device)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=0).logits[0].float()
    return logits if all_positions else logits[-1]
