"""GemFilter's invariants on a tiny random Llama: truncated selection, re-run prompt, chapter helpers."""
import pytest
import torch

from tokenbook.chapters import gemfilter as chapter
from tokenbook.longctx import gemfilter as gf
from tokenbook.longctx import selection as sel


TINY_LLAMA_LAYERS = 4   # the tiny_llama fixture (tests/conftest.py) at this depth


def ids_of(n, seed=0):
    return torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_truncated_selection_equals_the_full_pass_selection(tiny_llama, layer):
    ids = ids_of(40, layer)
    a = gf.select(tiny_llama, ids, layer, 12)
    b = sel.topk_tokens(chapter.layer_scores(tiny_llama, ids, 5)[layer], 12)
    assert torch.equal(a, b)
    assert a.shape == (12,) and torch.all(a[1:] > a[:-1])    # sorted, distinct: the prompt's order


def test_filter_score_is_last_query_logit_summed_over_heads(tiny_llama):
    ids = ids_of(16, 7)
    with sel.capture_attention_inputs(tiny_llama, [1]) as store:
        tiny_llama(input_ids=ids)
    attn = sel.decoder_layers(tiny_llama)[1].self_attn
    q, k = sel.project_qk(attn, store[1].hidden_states, store[1].position_embeddings)
    k_rep = k.repeat_interleave(2, dim=1)
    manual = (q[0, :, -1:] @ k_rep[0].transpose(-1, -2))[:, 0].sum(0)
    torch.testing.assert_close(gf.filter_scores(attn, store[1], pool=1), manual, atol=1e-4, rtol=1e-4)


def test_keeping_every_token_is_the_full_model(tiny_llama):
    ids = ids_of(20, 8)
    keep, cache, logits = gf.prefill(tiny_llama, ids, 1, 20)
    assert keep.tolist() == list(range(20))
    torch.testing.assert_close(logits, tiny_llama(input_ids=ids).logits[0, -1], atol=1e-4, rtol=1e-4)
    toks, _ = gf.generate(tiny_llama, ids, 1, 20, 4)
    assert len(toks) == 4


def test_selection_is_rerun_with_fresh_positions(tiny_llama):
    ids = ids_of(30, 9)
    keep, cache, logits = gf.prefill(tiny_llama, ids, 2, 8)
    ref = tiny_llama(input_ids=ids[:, keep]).logits[0, -1]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert cache.layers[0].keys.shape[2] == 8


def test_needle_recall_counts_needle_tokens():
    assert chapter.recall(torch.tensor([1, 5, 6, 9]), (5, 7)) == 1.0
    assert chapter.recall(torch.tensor([[1, 5], [6, 9]]), (5, 7)) == 0.5
