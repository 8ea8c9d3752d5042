"""Token selection and KV-cache eviction for any Hugging Face Llama-family model.

The shared toolkit of the chapters that keep only some of a prompt's tokens (GemFilter, LazyLLM,
SnapKV/H2O baselines, SirLLM-style streaming memory). Four jobs:

1. **See the attention without changing the model.** `capture_attention_inputs` hooks the
   attention modules and records what each one receives (its hidden states and RoPE cos/sin);
   `project_qk` turns that into rotated queries [B, Hq, T, D] and keys [B, Hkv, T, D] exactly as the
   module does (including q/k norms where a model family has them). Nothing is monkey-patched,
   any attention backend (SDPA, eager, a kernel) keeps running, and `StopForward` lets a hook end
   the forward pass early (GemFilter runs only the first r layers).
2. **Score tokens.** `last_query_logits` (q·k of the last query, the GemFilter score),
   `window_attention` (softmax attention of the last w queries, the SnapKV score) and
   `cumulative_attention` (column sums of the whole causal attention, the H2O score). GQA: the
   Hq query heads map to Hkv = Hq / G key heads, head h → h // G; `group_heads` folds query-head
   scores onto key heads.
3. **Choose what to keep.** `snapkv_keep`, `h2o_keep` → per-layer, per-KV-head index sets
   [Hkv, budget] (the observation/recent window always kept); `topk_tokens` → one sorted index set.
4. **Build the smaller state.** `subset_cache` gathers a DynamicCache holding only the kept keys
   and values (keys keep the RoPE of their original positions, so decoding continues at position
   T); `pruned_inputs` cuts input ids to a keep set with either original or fresh position ids.
   `run_layers` runs a slice of decoder layers on any token subset (the per-layer pruning path).

Shapes: B batch (1 here), T prompt tokens, Hq query heads, Hkv key/value heads, G = Hq / Hkv,
D head dim, k tokens kept. Book chapters: `gemfilter`, `lazyllm`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# ---- 1. seeing inside the attention modules ---------------------------------------------------

def decoder_layers(model):
    """The decoder layers of a Llama-family causal LM (model.model.layers)."""
    base = getattr(model, "model", model)
    return base.layers


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, T, D] as the model's rotary embedding returns them."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def project_qk(attn, hidden_states: torch.Tensor, position_embeddings, rows: slice | None = None):
    """Rotated queries [B, Hq, t, D] and keys [B, Hkv, T, D] of one attention module.

    `rows` restricts the queries to some positions (e.g. slice(-1, None) for the last one), which
    is all GemFilter and SnapKV need, and costs a t/T fraction of the query projection.
    """
    B, T, _ = hidden_states.shape
    D = attn.head_dim
    cos, sin = position_embeddings
    hq = hidden_states if rows is None else hidden_states[:, rows]
    cq = cos if rows is None else cos[:, rows]
    sq = sin if rows is None else sin[:, rows]
    q = attn.q_proj(hq).view(B, hq.shape[1], -1, D)
    k = attn.k_proj(hidden_states).view(B, T, -1, D)
    if getattr(attn, "q_norm", None) is not None:   # Qwen3/OLMo-style per-head norms
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    return apply_rope(q, cq, sq), apply_rope(k, cos, sin)


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layers it needs have run."""


@dataclass
class AttentionInputs:
    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


@contextmanager
def capture_attention_inputs(model, layers=None, *, on_capture=None, stop_after: int | None = None):
    """Record what the attention modules of `layers` receive during the next forward pass(es).

    Yields a dict {layer index: AttentionInputs}. `on_capture(i, attn_module, inputs)` is called
    at capture time (compute a score there and the hidden states need not be kept: return False
    to drop them). `stop_after=i` raises StopForward after layer i's inputs are captured, so the
    layers above i never run (catch it with `run_until`).
    """
    mods = decoder_layers(model)
    idx = range(len(mods)) if layers is None else sorted(set(layers))
    store: dict[int, AttentionInputs] = {}
    handles = []

    def make_hook(i):
        def hook(module, args, kwargs):
            h = kwargs.get("hidden_states", args[0] if args else None)
            inp = AttentionInputs(h, kwargs["position_embeddings"])
            keep = on_capture(i, module, inp) if on_capture is not None else True
            if keep is not False:
                store[i] = inp
            if stop_after is not None and i == stop_after:
                raise StopForward
        return hook

    for i in idx:
        handles.append(mods[i].self_attn.register_forward_pre_hook(make_hook(i), with_kwargs=True))
    try:
        yield store
    finally:
        for hd in handles:
            hd.remove()


@torch.inference_mode()
def run_until(model, layer: int, input_ids: torch.Tensor, *, on_capture=None, position_ids=None) -> dict:
    """Run the model's first layers up to the attention of `layer` (0-based), then stop.

    Returns {layer: AttentionInputs}. Layers above `layer` never run: the cost is about
    (layer + 1) / L of a full forward pass.
    """
    with capture_attention_inputs(model, [layer], on_capture=on_capture, stop_after=layer) as store:
        try:
            kw = {} if position_ids is None else {"position_ids": position_ids,
                                                   "attention_mask": torch.ones_like(input_ids)}
            model.model(input_ids=input_ids, use_cache=False, **kw)
        except StopForward:
            pass
    return store


# ---- 2. scoring tokens ------------------------------------------------------------------------

def group_heads(scores: torch.Tensor, n_kv_heads: int, reduce: str = "mean") -> torch.Tensor:
    """[..., Hq, T] query-head scores → [..., Hkv, T] key-head scores (GQA: head h → h // G)."""
    *lead, Hq, T = scores.shape
    g = scores.reshape(*lead, n_kv_heads, Hq // n_kv_heads, T)
    return g.mean(-2) if reduce == "mean" else g.sum(-2)


def repeat_kv(k: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, T, D] → [B, Hkv·G, T, D]: each key head serves G consecutive query heads."""
    return k if groups == 1 else k.repeat_interleave(groups, dim=1)


def last_query_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Unnormalised q·k of the last query against every key, per query head: [B, Hq, T]."""
    groups = q.shape[1] // k.shape[1]
    return torch.einsum("bhd,bhtd->bht", q[:, :, -1].float(), repeat_kv(k, groups).float())


def window_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of the last w queries (q [B, Hq, w, D]) to all T keys, causal: [B, Hq, w, T]."""
    w, T = q.shape[2], k.shape[2]
    groups = q.shape[1] // k.shape[1]
    logits = torch.einsum("bhwd,bhtd->bhwt", q.float(), repeat_kv(k, groups).float()) * scale
    qpos = torch.arange(T - w, T, device=q.device)[:, None]
    logits = logits.masked_fill(torch.arange(T, device=q.device)[None] > qpos, float("-inf"))
    return logits.softmax(-1)


def cumulative_attention(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int = 512) -> torch.Tensor:
    """H2O's heavy-hitter score: attention each key receives summed over all queries: [B, Hq, T]."""
    B, Hq, T, _ = q.shape
    groups = Hq // k.shape[1]
    kk = repeat_kv(k, groups).float()
    total = torch.zeros(B, Hq, T, device=q.device)
    for s in range(0, T, chunk):
        qs = q[:, :, s:s + chunk].float()
        logits = torch.einsum("bhqd,bhtd->bhqt", qs, kk) * scale
        qpos = torch.arange(s, s + qs.shape[2], device=q.device)[:, None]
        logits = logits.masked_fill(torch.arange(T, device=q.device)[None] > qpos, float("-inf"))
        total += logits.softmax(-1).sum(2)
    return total


def smooth(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average-pool scores [..., T] along T with an odd kernel (neighbours of a hit come along)."""
    if kernel <= 1:
        return scores
    shape = scores.shape
    x = F.avg_pool1d(scores.reshape(-1, 1, shape[-1]), kernel, stride=1, padding=kernel // 2,
                     count_include_pad=False)
    return x.reshape(shape)


# ---- 3. choosing what to keep -----------------------------------------------------------------

def topk_tokens(scores: torch.Tensor, k: int, *, always: torch.Tensor | None = None) -> torch.Tensor:
    """The k highest-scoring positions of scores [T], sorted ascending (the prompt's order kept).

    `always` (indices) are kept first and count against k.
    """
    T = scores.shape[-1]
    k = min(k, T)
    s = scores.clone().float()
    if always is not None:
        s[always] = float("inf")
    return torch.topk(s, k).indices.sort().values


def _window_plus_topk(scores: torch.Tensor, budget: int, window: int) -> torch.Tensor:
    """scores [Hkv, T]: per head, the last `window` positions plus the top (budget − window) others."""
    H, T = scores.shape
    if budget >= T:
        return torch.arange(T, device=scores.device).expand(H, T).clone()
    window = min(window, budget)
    prefix = scores[:, :T - window]
    chosen = torch.topk(prefix, budget - window, dim=-1).indices
    recent = torch.arange(T - window, T, device=scores.device).expand(H, window)
    return torch.cat([chosen, recent], -1).sort(-1).values


def snapkv_keep(window_attn: torch.Tensor, n_kv_heads: int, budget: int, *, kernel: int = 7) -> torch.Tensor:
    """SnapKV (Li et al. 2024): window_attn [Hq, w, T] → kept positions [Hkv, budget].

    Votes of the observation window (attention summed over its w queries), pooled so that
    neighbouring tokens come along, folded onto key heads; the window itself is always kept.
    """
    w = window_attn.shape[1]
    votes = group_heads(smooth(window_attn.sum(1), kernel), n_kv_heads)
    return _window_plus_topk(votes, budget, w)


def h2o_keep(cumulative: torch.Tensor, n_kv_heads: int, budget: int, *, recent: int) -> torch.Tensor:
    """H2O (Zhang et al. 2023): cumulative [Hq, T] → kept positions [Hkv, budget]: heavy hitters + recent."""
    return _window_plus_topk(group_heads(cumulative, n_kv_heads), budget, recent)


# ---- 4. the smaller state ---------------------------------------------------------------------

def subset_cache(cache, keep: list[torch.Tensor]):
    """A new DynamicCache with, per layer, only the kept positions (keep[l]: [Hkv, k] or [k]).

    Keys keep the rotation of their original positions: continue decoding at position T (the
    original prompt length) with explicit position_ids, as `greedy_decode` does.
    """
    from transformers import DynamicCache
    out = DynamicCache()
    for li, layer in enumerate(cache.layers):
        K, V = layer.keys, layer.values                      # [B, Hkv, T, D]
        idx = keep[li].to(K.device)
        if idx.dim() == 1:
            idx = idx.expand(K.shape[1], -1)
        gi = idx[None, :, :, None].expand(K.shape[0], -1, -1, K.shape[-1])
        out.update(K.gather(2, gi).clone(), V.gather(2, gi).clone(), li)
    return out


def pruned_inputs(input_ids: torch.Tensor, keep: torch.Tensor, *, reposition: bool) -> dict:
    """Model kwargs for input_ids [1, T] cut to the sorted positions `keep` [k].

    reposition=True gives fresh positions 0..k-1 (GemFilter: the selection is a new, short prompt);
    False keeps the original positions, with an explicit all-ones mask so transformers does not
    mistake the gaps in position_ids for packed sequences.
    """
    ids = input_ids[:, keep]
    if reposition:
        return {"input_ids": ids}
    return {"input_ids": ids, "position_ids": keep[None].to(input_ids.device),
            "attention_mask": torch.ones_like(ids)}


def causal_additive_mask(t: int, dtype, device) -> torch.Tensor:
    """[1, 1, t, t] additive causal mask (0 allowed, dtype-min blocked): what eager and SDPA both accept."""
    m = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return m[None, None]


@torch.inference_mode()
def run_layers(model, hidden: torch.Tensor, position_ids: torch.Tensor, start: int, end: int, *,
               cache=None) -> torch.Tensor:
    """Run decoder layers [start, end) on hidden [1, t, d] at the given (sorted, maybe gapped) positions.

    Causal attention among the t tokens (their order is the prompt's); with `cache`, layers append
    their keys/values to it. Used for per-layer token subsets (LazyLLM).
    """
    base = getattr(model, "model", model)
    pe = base.rotary_emb(hidden, position_ids=position_ids)
    mask = causal_additive_mask(hidden.shape[1], hidden.dtype, hidden.device)
    for layer in decoder_layers(model)[start:end]:
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                       use_cache=cache is not None, position_embeddings=pe)
    return hidden


@torch.inference_mode()
def greedy_decode(model, cache, first_logits: torch.Tensor, next_position: int, n_new: int,
                  stop=None) -> list[int]:
    """Greedy tokens after a prefill: the first from `first_logits` [V], then one step at a time.

    `next_position` is the RoPE position of the first generated token (the original prompt length
    for an evicted cache, the selection's length for a re-run prompt). `stop`: a token id or a set
    of ids that end the answer (not returned).
    """
    stop = set() if stop is None else ({stop} if isinstance(stop, int) else set(stop))
    device = first_logits.device
    tokens = [int(first_logits.argmax())]
    for i in range(n_new - 1):
        if tokens[-1] in stop:
            break
        out = model(input_ids=torch.tensor([[tokens[-1]]], device=device),
                    position_ids=torch.tensor([[next_position + i]], device=device),
                    past_key_values=cache, use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens[:-1] if tokens[-1] in stop else tokens


def stop_tokens(tok, chars: str = ".\n") -> set[int]:
    """Ids of the tokens that contain any of `chars`, plus EOS: where a one-sentence answer ends."""
    ids = {i for t, i in tok.get_vocab().items() if any(c in tok.convert_tokens_to_string([t]) for c in chars)}
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


# ---- one prefill that also scores: the eviction baselines --------------------------------------

def snapkv_scorer(window: int):
    """A scorer for `prefill_with_scores`: the last `window` queries' attention [Hq, w, T]."""
    def score(attn, inp: AttentionInputs) -> torch.Tensor:
        q, k = project_qk(attn, inp.hidden_states, inp.position_embeddings, rows=slice(-window, None))
        return window_attention(q, k, attn.scaling)[0]
    return score


def h2o_scorer(chunk: int = 512):
    """A scorer for `prefill_with_scores`: attention received by each key from all queries [Hq, T]."""
    def score(attn, inp: AttentionInputs) -> torch.Tensor:
        q, k = project_qk(attn, inp.hidden_states, inp.position_embeddings)
        return cumulative_attention(q, k, attn.scaling, chunk)[0]
    return score


@torch.inference_mode()
def prefill_with_scores(model, input_ids: torch.Tensor, scorers: dict) -> tuple[object, dict]:
    """Full prefill with a KV cache; every layer's attention inputs are scored on the fly.

    scorers: {name: fn(attn_module, AttentionInputs) → tensor}. Returns (model output with
    past_key_values and last-position logits, {name: [score of layer 0, 1, ...]}).
    """
    scores: dict[str, dict[int, torch.Tensor]] = {n: {} for n in scorers}

    def on_capture(i, attn, inp):
        for n, fn in scorers.items():
            scores[n][i] = fn(attn, inp)
        return False

    with capture_attention_inputs(model, on_capture=on_capture):
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return out, {n: [d[i] for i in sorted(d)] for n, d in scores.items()}


@torch.inference_mode()
def snapkv_prefill(model, input_ids: torch.Tensor, budget: int, *, window: int = 32, kernel: int = 7):
    """SnapKV's time-to-first-token path: full prefill, window votes per layer, pruned cache.

    Returns (kept positions per layer [[Hkv, budget]], pruned cache, first-token logits [V]).
    """
    n_kv = model.config.num_key_value_heads
    out, sc = prefill_with_scores(model, input_ids, {"snapkv": snapkv_scorer(window)})
    keep = [snapkv_keep(a, n_kv, budget, kernel=kernel) for a in sc["snapkv"]]
    return keep, subset_cache(out.past_key_values, keep), out.logits[0, -1].float()
