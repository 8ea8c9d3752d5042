"""LazyLLM (Fu et al., 2024, arXiv:2407.14057): compute the prompt's tokens only as deep as they matter.

Prefill runs layer by layer. At each pruning layer l (a schedule such as L/4, L/2, 3L/4), every
still-active token gets an importance score: the attention it receives from the *last* token in
the layer below, averaged over heads,

    s_j = mean_h softmax_j( q_{h,T} · k_{h,j} / √D ),

and only the top fraction `keep[l]` of the prompt (the last token always) goes on to layer l and
above. The prompt tokens pruned at l are not thrown away: their hidden state entering layer l goes
to an **auxiliary cache**. Time to first token falls because the upper layers see fewer tokens.

While decoding, every new token repeats the selection at the pruning layers. A pruned token that
becomes important again is **revived** from the auxiliary cache: it is run from layer l upwards
(attending, causally by position, to what each layer's KV cache holds) instead of from scratch, and
its keys/values join those layers' caches. Each token is computed at most once per layer.

Static pruning (the baseline) drops the same tokens from every layer up front, chosen once.

Shapes: T prompt tokens, t active tokens at a layer, d hidden size. Book chapter: `lazyllm`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import selection as sel


@dataclass
class LazyState:
    """What a LazyLLM prefill leaves behind for decoding."""
    cache: object                                   # DynamicCache; layer l holds its active tokens only
    positions: list[torch.Tensor]                   # per layer: positions whose KV is in the cache (cache order)
    aux: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # l → (positions, hidden [1, m, d])
    computed: list[int] = field(default_factory=list)   # tokens computed per layer (the prefill's work)


def last_token_importance(model, layer: int, hidden_in: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Attention from the last active token to every active token at `layer`, head-averaged: [t]."""
    dl = sel.decoder_layers(model)[layer]
    base = getattr(model, "model", model)
    pe = base.rotary_emb(hidden_in, position_ids=position_ids)
    q, k = sel.project_qk(dl.self_attn, dl.input_layernorm(hidden_in), pe, rows=slice(-1, None))
    logits = sel.last_query_logits(q, k)[0] * dl.self_attn.scaling      # [Hq, t]
    return logits.softmax(-1).mean(0)


def schedule(n_layers: int, fractions) -> dict[int, float]:
    """Pruning layers at equal depth steps: fractions [f1, f2, f3] → {L/4: f1, L/2: f2, 3L/4: f3}."""
    n = len(fractions)
    return {round(n_layers * (i + 1) / (n + 1)): float(f) for i, f in enumerate(fractions)}


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, keep: dict[int, float]) -> tuple[torch.Tensor, LazyState]:
    """LazyLLM prefill. keep: {layer: fraction of the prompt still active from that layer on}.

    Returns (first-token logits [V], LazyState). keep={} is the ordinary full prefill.
    """
    from transformers import DynamicCache
    base = getattr(model, "model", model)
    T = input_ids.shape[1]
    h = base.embed_tokens(input_ids)
    pos = torch.arange(T, device=input_ids.device)
    cache = DynamicCache()
    state = LazyState(cache, [], {}, [])
    prev_in = None
    for l in range(len(sel.decoder_layers(model))):
        if l in keep and l > 0:
            s = last_token_importance(model, l - 1, prev_in, pos[None])
            n_keep = max(1, min(len(pos), round(keep[l] * T)))
            s[-1] = float("inf")                                  # the last token always goes on
            kept = torch.topk(s, n_keep).indices.sort().values
            dropped = torch.ones(len(pos), dtype=torch.bool, device=pos.device)
            dropped[kept] = False
            if dropped.any():
                state.aux[l] = (pos[dropped], h[:, dropped])
            pos, h = pos[kept], h[:, kept]
        prev_in = h
        state.positions.append(pos)
        state.computed.append(len(pos))
        h = sel.run_layers(model, h, pos[None], l, l + 1, cache=cache)
    logits = model.lm_head(base.norm(h[:, -1:]))[0, -1].float()
    return logits, state


@torch.inference_mode()
def static_prefill(model, input_ids: torch.Tensor, kept: torch.Tensor):
    """Static pruning: the tokens `kept` (sorted, original positions) are the whole prompt, in every layer."""
    out = model(**sel.pruned_inputs(input_ids, kept, reposition=False), use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float(), out.past_key_values


def _attend_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, dtype) -> torch.Tensor:
    """[1, 1, m, n] additive mask: query at position p sees the keys at positions ≤ p."""
    ok = key_pos[None, :] <= query_pos[:, None]
    m = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, torch.finfo(dtype).min)
    return m[None, None]


def _run_layer_on_cache(model, l: int, h: torch.Tensor, pos: torch.Tensor, state: LazyState) -> torch.Tensor:
    """Run layer l for tokens at positions `pos` against what layer l's cache holds, then add them to it."""
    base = getattr(model, "model", model)
    pe = base.rotary_emb(h, position_ids=pos[None])
    key_pos = torch.cat([state.positions[l], pos])
    mask = _attend_mask(pos, key_pos, h.dtype)
    out = sel.decoder_layers(model)[l](h, attention_mask=mask, position_ids=pos[None], past_key_values=state.cache,
                                      use_cache=True, position_embeddings=pe)
    state.positions[l] = key_pos
    return out


@torch.inference_mode()
def decode_step(model, token: int, position: int, state: LazyState, keep: dict[int, float]) -> tuple[torch.Tensor, int]:
    """One generated token through the lazy model, reviving pruned prompt tokens that now matter.

    At each pruning layer l the new token ranks the tokens of layer l−1's cache by its attention
    there; any aux-cache token of layer l in the top fraction keep[l] of them is revived: run from its stored
    hidden state through layers l..L−1 (joining their caches) before the new token goes on.
    Returns (next-token logits [V], number of revived tokens).
    """
    base = getattr(model, "model", model)
    device = base.embed_tokens.weight.device
    h = base.embed_tokens(torch.tensor([[token]], device=device))
    p = torch.tensor([position], device=device)
    revived = 0
    L = len(sel.decoder_layers(model))
    h_prev_in = h  # the input of the previous layer (layer 0 never has pruned tokens to revive)
    for l in range(L):
        if l in state.aux and len(state.aux[l][0]):
            s = _query_importance(model, l - 1, h_prev_in, p, state)
            n_keep = max(1, min(len(s), round(keep[l] * len(s))))
            top = state.positions[l - 1][torch.topk(s, n_keep).indices]
            apos, ah = state.aux[l]
            back = torch.isin(apos, top)
            if back.any():
                order = torch.argsort(apos[back])
                rp, rh = apos[back][order], ah[:, back][:, order]
                for m in range(l, L):              # run the revived tokens up through the stack
                    rh = _run_layer_on_cache(model, m, rh, rp, state)
                revived += int(back.sum())
                state.aux[l] = (apos[~back], ah[:, ~back])
        h_prev_in = h
        h = _run_layer_on_cache(model, l, h, p, state)
    return model.lm_head(base.norm(h))[0, -1].float(), revived


def _query_importance(model, layer: int, h_in: torch.Tensor, p: torch.Tensor, state: LazyState) -> torch.Tensor:
    """The new token's head-averaged attention over layer `layer`'s cached keys: [n_cached]."""
    dl = sel.decoder_layers(model)[layer]
    base = getattr(model, "model", model)
    pe = base.rotary_emb(h_in, position_ids=p[None])
    q, _ = sel.project_qk(dl.self_attn, dl.input_layernorm(h_in), pe)
    K = state.cache.layers[layer].keys                                  # [1, Hkv, n, D]
    logits = sel.last_query_logits(q, K)[0] * dl.self_attn.scaling     # [Hq, n]
    return logits.softmax(-1).mean(0)


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, keep: dict[int, float], n_new: int, stop=None) -> tuple[list[int], dict]:
    """Greedy LazyLLM generation: (tokens, {computed per layer, revived tokens})."""
    stop = set() if stop is None else ({stop} if isinstance(stop, int) else set(stop))
    T = input_ids.shape[1]
    logits, state = prefill(model, input_ids, keep)
    tokens, revived = [int(logits.argmax())], 0
    for i in range(n_new - 1):
        if tokens[-1] in stop:
            break
        logits, r = decode_step(model, tokens[-1], T + i, state, keep)
        revived += r
        tokens.append(int(logits.argmax()))
    if tokens[-1] in stop:
        tokens = tokens[:-1]
    return tokens, {"computed": state.computed, "revived": revived}
