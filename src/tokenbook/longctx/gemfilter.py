"""GemFilter (Shi et al., 2024, arXiv:2409.17422): early layers pick the tokens, the full model reads them.

An LLM's early-to-middle layers already attend from the question to the relevant part of a long
prompt. GemFilter therefore

1. runs only the first r+1 layers on the full prompt (r = the filter layer, 0-based; about 13 of
   Llama-3-8B's 32) and stops there;
2. scores every token by the last query's unnormalised attention logits at layer r, summed over
   the query heads (GQA: each key head is repeated for its G query heads) and average-pooled
   with a small kernel,

       s_j = pool( Σ_h  q_{h,T}ᵀ k_{h,j} ),   keep = sorted(top-k_j s_j);

3. feeds the k selected tokens — in their original order, with fresh positions 0..k-1 so RoPE is
   recomputed — to the full model as a new, short prompt, and generates from that.

The filter pass costs (r+1)/L of a prefill and holds no KV cache; the second pass is over k ≪ T
tokens. KV-eviction methods (SnapKV, H2O; `tokenbook.longctx.selection`) instead prefill the full
prompt and prune the cache afterwards, so their time to first token and peak memory are those of a
full prefill. Book chapter: `gemfilter`.
"""
from __future__ import annotations

import torch

from . import selection as sel


def filter_scores(attn, inputs: sel.AttentionInputs, pool: int = 5) -> torch.Tensor:
    """GemFilter's score of each prompt token at one layer: [T] (from that layer's attention inputs)."""
    q, k = sel.project_qk(attn, inputs.hidden_states, inputs.position_embeddings, rows=slice(-1, None))
    logits = sel.last_query_logits(q, k)[0]           # [Hq, T]
    return sel.smooth(logits.sum(0), pool)


@torch.inference_mode()
def select(model, input_ids: torch.Tensor, layer: int, k: int, *, pool: int = 5) -> torch.Tensor:
    """Run layers 0..layer on input_ids [1, T], stop, and return the k selected positions (sorted)."""
    scores = {}

    def score(i, attn, inp):
        scores[i] = filter_scores(attn, inp, pool)
        return False                                   # the hidden states are not needed afterwards

    sel.run_until(model, layer, input_ids, on_capture=score)
    return sel.topk_tokens(scores[layer], k)


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor, layer: int, k: int, *, pool: int = 5):
    """The whole time-to-first-token path: select, then prefill the selection with a KV cache.

    Returns (kept positions [k], cache, first-token logits [V]).
    """
    keep = select(model, input_ids, layer, k, pool=pool)
    out = model(**sel.pruned_inputs(input_ids, keep, reposition=True), use_cache=True, logits_to_keep=1)
    return keep, out.past_key_values, out.logits[0, -1].float()


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, layer: int, k: int, n_new: int, *, pool: int = 5,
             stop=None) -> tuple[list[int], torch.Tensor]:
    """GemFilter generation: (greedy new tokens, kept positions)."""
    keep, cache, logits = prefill(model, input_ids, layer, k, pool=pool)
    return sel.greedy_decode(model, cache, logits, len(keep), n_new, stop), keep


@torch.inference_mode()
def generate_from_selection(model, input_ids: torch.Tensor, keep: torch.Tensor, n_new: int,
                            stop=None) -> list[int]:
    """Second stage only, for a selection made elsewhere (e.g. the scores of every layer from one pass)."""
    out = model(**sel.pruned_inputs(input_ids, keep, reposition=True), use_cache=True, logits_to_keep=1)
    return sel.greedy_decode(model, out.past_key_values, out.logits[0, -1].float(), len(keep), n_new, stop)
