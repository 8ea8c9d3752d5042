"""The token-selection toolkit on a tiny random Llama: hooks see what attention sees, caches subset exactly."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenbook.longctx import selection as sel


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    conf = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=97, max_position_embeddings=256,
                       attn_implementation="eager")
    return LlamaForCausalLM(conf).eval()


def ids_of(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 97, (1, n), generator=g)


def test_hooked_queries_and_keys_reproduce_the_models_attention(tiny_llama):
    """Softmax of our q·k for the last w queries equals the eager attention weights HF returns."""
    ids = ids_of(20)
    with sel.capture_attention_inputs(tiny_llama) as store:
        out = tiny_llama(input_ids=ids, output_attentions=True)
    for i, attn_w in enumerate(out.attentions):
        inp = store[i]
        attn = sel.decoder_layers(tiny_llama)[i].self_attn
        q, k = sel.project_qk(attn, inp.hidden_states, inp.position_embeddings, rows=slice(-5, None))
        ours = sel.window_attention(q, k, attn.scaling)[0]
        torch.testing.assert_close(ours, attn_w[0, :, -5:].float(), atol=1e-5, rtol=1e-4)
        cum = sel.cumulative_attention(*sel.project_qk(attn, inp.hidden_states, inp.position_embeddings),
                                       attn.scaling, chunk=7)[0]
        torch.testing.assert_close(cum, attn_w[0].sum(1).float(), atol=1e-5, rtol=1e-4)


def test_keys_from_hooks_match_the_kv_cache(tiny_llama):
    ids = ids_of(12, 1)
    with sel.capture_attention_inputs(tiny_llama) as store:
        out = tiny_llama(input_ids=ids, use_cache=True)
    for i, layer in enumerate(out.past_key_values.layers):
        attn = sel.decoder_layers(tiny_llama)[i].self_attn
        _, k = sel.project_qk(attn, store[i].hidden_states, store[i].position_embeddings)
        torch.testing.assert_close(k, layer.keys, atol=1e-5, rtol=1e-5)


def test_run_until_stops_after_the_requested_layer(tiny_llama):
    calls = []
    hooks = [l.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, l in enumerate(sel.decoder_layers(tiny_llama))]
    try:
        store = sel.run_until(tiny_llama, 1, ids_of(10))
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0] and list(store) == [1]     # layer 1's attention was reached, never finished


def test_group_heads_maps_query_heads_to_their_kv_head():
    s = torch.arange(4.0)[:, None].expand(4, 3)     # query heads 0..3, T = 3
    g = sel.group_heads(s, 2)
    assert g[:, 0].tolist() == [0.5, 2.5]


def test_keep_sets_hold_the_window_and_the_top_scores():
    scores = torch.zeros(2, 10)
    scores[0, 2] = scores[1, 5] = 1.0
    keep = sel._window_plus_topk(scores, budget=4, window=3)
    assert keep.shape == (2, 4)
    assert keep[0].tolist() == [2, 7, 8, 9] and keep[1].tolist() == [5, 7, 8, 9]
    assert sel.topk_tokens(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2).tolist() == [1, 2]
    assert sel.topk_tokens(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2, always=torch.tensor([3])).tolist() == [1, 3]


def test_subset_cache_with_every_token_decodes_like_the_full_cache(tiny_llama):
    ids = ids_of(16, 2)
    out = tiny_llama(input_ids=ids, use_cache=True)
    first = out.logits[0, -1]
    keep = [torch.arange(16).expand(2, 16) for _ in range(3)]
    a = sel.greedy_decode(tiny_llama, sel.subset_cache(out.past_key_values, keep), first, 16, 6)
    b = sel.greedy_decode(tiny_llama, out.past_key_values, first, 16, 6)
    assert a == b


def test_subset_cache_equals_attention_masked_to_the_kept_keys(tiny_llama):
    """One decode step over a pruned cache = the same step with a mask hiding the evicted keys."""
    ids = ids_of(14, 3)
    out = tiny_llama(input_ids=ids, use_cache=True)
    keep_pos = torch.tensor([0, 3, 4, 9, 12, 13])
    cache = sel.subset_cache(out.past_key_values, [keep_pos] * 3)
    nxt = torch.tensor([[5]])
    pruned = tiny_llama(input_ids=nxt, position_ids=torch.tensor([[14]]), past_key_values=cache).logits
    full = sel.subset_cache(out.past_key_values, [torch.arange(14)] * 3)
    mask = torch.zeros(1, 15, dtype=torch.long)
    mask[0, keep_pos] = 1
    mask[0, 14] = 1
    masked = tiny_llama(input_ids=nxt, position_ids=torch.tensor([[14]]), past_key_values=full, attention_mask=mask).logits
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-4)


def test_pruned_inputs_keep_original_positions_without_packing_confusion(tiny_llama):
    """Gapped position ids with the explicit mask = running layers by hand on that subset."""
    ids = ids_of(12, 4)
    keep = torch.tensor([0, 2, 5, 6, 11])
    kw = sel.pruned_inputs(ids, keep, reposition=False)
    a = tiny_llama.model(**kw).last_hidden_state
    h = tiny_llama.model.embed_tokens(ids[:, keep])
    b = tiny_llama.model.norm(sel.run_layers(tiny_llama, h, keep[None], 0, 3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert sel.pruned_inputs(ids, keep, reposition=True).keys() == {"input_ids"}


def test_snapkv_prefill_keeps_budget_per_layer_and_head(tiny_llama):
    keep, cache, logits = sel.snapkv_prefill(tiny_llama, ids_of(30, 5), budget=10, window=4, kernel=3)
    assert len(keep) == 3 and all(k.shape == (2, 10) for k in keep)
    assert all(set(range(26, 30)) <= set(k[h].tolist()) for k in keep for h in range(2))
    assert cache.layers[0].keys.shape[2] == 10 and logits.shape == (97,)


def test_stop_tokens_end_the_answer(tiny_llama):
    ids = ids_of(8, 6)
    out = tiny_llama(input_ids=ids, use_cache=True)
    full = sel.greedy_decode(tiny_llama, out.past_key_values, out.logits[0, -1], 8, 5)
    out = tiny_llama(input_ids=ids, use_cache=True)
    cut = sel.greedy_decode(tiny_llama, out.past_key_values, out.logits[0, -1], 8, 5, stop={full[2]})
    assert cut == full[:full.index(full[2])]
