"""The lazyllm chapter's bookkeeping on a tiny random Llama: work fractions, revival accounting, static selection."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenbook.chapters import lazyllm as ch
from tokenbook.longctx import lazyllm as lz
from tokenbook.longctx import selection as sel


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    conf = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, attn_implementation="sdpa")
    return LlamaForCausalLM(conf).eval()


def ids_of(n, seed=0):
    return torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def test_no_pruning_costs_everything_and_matches_full_greedy(tiny_llama):
    ids = ids_of(20)
    toks, info = ch.lazy_generate(tiny_llama, ids, {}, 5, set())
    out = tiny_llama(input_ids=ids, use_cache=True)
    assert toks == sel.greedy_decode(tiny_llama, out.past_key_values, out.logits[0, -1], 20, 5)
    assert info == {"prefill_fraction": 1.0, "total_fraction": 1.0, "revived": 0}


def test_work_counts_prefill_and_revived_layers(tiny_llama):
    ids = ids_of(40, 1)
    keep = {1: 0.6, 2: 0.4, 3: 0.2}
    _, info = ch.lazy_generate(tiny_llama, ids, keep, 6, set())
    assert info["prefill_fraction"] == pytest.approx((40 + 24 + 16 + 8) / 160)
    assert info["prefill_fraction"] <= info["total_fraction"] <= 1.0
    assert (info["revived"] > 0) == (info["total_fraction"] > info["prefill_fraction"])
    _, off = ch.lazy_generate(tiny_llama, ids, keep, 6, set(), revive=False)
    assert off["revived"] == 0 and off["total_fraction"] == off["prefill_fraction"] == info["prefill_fraction"]


def test_static_selection_keeps_the_window_and_the_size(tiny_llama):
    ids = ids_of(50, 3)
    for rng in (None, np.random.default_rng(0)):
        kept = ch.static_selection(tiny_llama, ids, 20, 8, rng)
        assert len(kept) == 20 and len(set(kept.tolist())) == 20
        assert kept.tolist() == sorted(kept.tolist()) and set(range(42, 50)) <= set(kept.tolist())


def test_schedule_names_and_work_fraction():
    class Cfg:
        schedules = [[0.8, 0.6, 0.4], [0.5, 0.25, 0.1]]
    assert ch.keep_schedules(Cfg, 30) == {"0.8/0.6/0.4": {8: 0.8, 15: 0.6, 22: 0.4}, "0.5/0.25/0.1": {8: 0.5, 15: 0.25, 22: 0.1}}
    assert ch.work_fraction([10, 10, 5, 5], 10) == 0.75
