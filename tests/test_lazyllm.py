"""LazyLLM's invariants on a tiny random Llama: no pruning = the full model; pruning and revival bookkeeping."""
import pytest
import torch

from tokenbook.longctx import lazyllm as lz
from tokenbook.longctx import selection as sel


TINY_LLAMA_LAYERS = 4   # the tiny_llama fixture (tests/conftest.py) at this depth


def ids_of(n, seed=0):
    return torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def full_greedy(model, ids, n):
    out = model(input_ids=ids, use_cache=True)
    return sel.greedy_decode(model, out.past_key_values, out.logits[0, -1], ids.shape[1], n)


@pytest.mark.parametrize("keep", [{}, {1: 1.0, 2: 1.0, 3: 1.0}])
def test_without_pruning_it_is_the_full_model(tiny_llama, keep):
    ids = ids_of(18)
    logits, state = lz.prefill(tiny_llama, ids, keep)
    torch.testing.assert_close(logits, tiny_llama(input_ids=ids).logits[0, -1], atol=1e-4, rtol=1e-4)
    assert state.computed == [18] * 4 and not state.aux
    toks, info = lz.generate(tiny_llama, ids, keep, 5)
    assert toks == full_greedy(tiny_llama, ids, 5) and info["revived"] == 0


def test_progressive_pruning_keeps_the_last_token_and_parks_the_rest(tiny_llama):
    ids = ids_of(40, 1)
    keep = {1: 0.6, 2: 0.4, 3: 0.2}
    logits, state = lz.prefill(tiny_llama, ids, keep)
    assert state.computed == [40, 24, 16, 8]
    for l in (1, 2, 3):
        assert state.positions[l][-1] == 39                       # the last token always goes on
        before = set(state.positions[l - 1].tolist())
        assert set(state.positions[l].tolist()) | set(state.aux[l][0].tolist()) == before
        assert state.cache.layers[l].keys.shape[2] == len(state.positions[l])
    assert torch.isfinite(logits).all()


def test_revival_brings_pruned_tokens_back_into_the_upper_layers(tiny_llama):
    ids = ids_of(30, 2)
    logits, state = lz.prefill(tiny_llama, ids, {2: 0.3})
    assert state.computed == [30, 30, 9, 9]
    # decoding with keep = 1.0 at layer 2 wants every token back: all of them are revived at once
    _, revived = lz.decode_step(tiny_llama, int(logits.argmax()), 30, state, {2: 1.0})
    assert revived == 21 and len(state.aux[2][0]) == 0
    for l in (2, 3):
        assert sorted(state.positions[l].tolist()) == list(range(31))


def test_schedule_spreads_pruning_layers():
    assert lz.schedule(30, [0.8, 0.6, 0.4]) == {8: 0.8, 15: 0.6, 22: 0.4}


def test_static_pruning_keeps_original_positions(tiny_llama):
    ids = ids_of(20, 3)
    kept = torch.tensor([0, 4, 7, 19])
    logits, cache = lz.static_prefill(tiny_llama, ids, kept)
    assert cache.layers[0].keys.shape[2] == 4 and logits.shape == (97,)
