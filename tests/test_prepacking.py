"""Prepacking's invariants on a tiny random Llama: layouts, masks, and exact outputs."""
import numpy as np
import pytest
import torch

from tokenbook.longctx import prepacking as pp




def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 97, n).tolist() for n in lengths]


@pytest.mark.parametrize("lengths, capacity", [([5, 3, 9, 1, 7, 2], 9), ([4] * 7, 8), ([10], 10), ([1] * 13, 5)])
def test_first_fit_decreasing_places_every_item_once_within_capacity(lengths, capacity):
    bins = pp.first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert len(bins) <= 11 / 9 * np.ceil(sum(lengths) / capacity) + 1   # FFD's guarantee vs the volume bound


def test_first_fit_decreasing_rejects_oversized_items():
    with pytest.raises(ValueError, match="does not fit"):
        pp.first_fit_decreasing([3, 12], 10)


def test_block_mask_is_causal_within_and_blind_across_prompts():
    seq = torch.tensor([[0, 0, 0, 1, 1, -1]])
    m = pp.block_diagonal_causal_mask(seq)[0, 0]
    assert m.shape == (6, 6)
    assert m[2, 0] and m[2, 2] and not m[0, 2]            # causal inside prompt 0
    assert not m[3, 2] and not m[4, 0]                    # prompt 1 never sees prompt 0
    assert m[4, 3] and not m[4, 5]                        # nor padding
    assert m[5].sum() == 1 and m[5, 5]                    # padding rows are never empty


def test_layouts_place_prompts_and_restart_positions():
    prompts = prompts_of([5, 3, 9, 1, 7, 2])
    b = pp.prepacked(prompts, pad_id=0)
    assert b.input_ids.shape[1] == 9 and b.input_ids.shape[0] < len(prompts)
    for k, ((r, s), n) in enumerate(zip(b.where, b.lengths)):
        assert b.input_ids[r, s:s + n].tolist() == prompts[k]
        assert b.position_ids[r, s:s + n].tolist() == list(range(n))
    v = pp.varlen(prompts)
    assert v.cu_seqlens.tolist() == [0, 5, 8, 17, 18, 25, 27] and v.max_seqlen == 9
    assert v.computed_tokens == 27 < pp.padded(prompts, 0).computed_tokens == 54


def test_padding_stats_counts_waste():
    prompts = prompts_of([8, 2, 2, 2, 2])
    s = pp.padding_stats(prompts, [list(range(5))], "padded")
    assert s == {"real_tokens": 16, "computed_tokens": 40, "waste": 0.6}
    assert pp.padding_stats(prompts, [list(range(5))], "prepacked")["computed_tokens"] == 16


@pytest.mark.parametrize("layout", pp.LAYOUTS)
def test_every_layout_reproduces_lone_prompt_logits(tiny_llama, layout):
    prompts = prompts_of([5, 3, 9, 1, 7, 2, 12], seed=1)
    ref = [pp.single_prompt_reference(tiny_llama, p, "cpu", all_positions=True) for p in prompts]
    out = pp.prefill_logits(tiny_llama, pp.make_batch(layout, prompts, 0), layout, all_positions=True)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=1e-4, rtol=1e-4)


def test_a_broken_mask_is_detected(tiny_llama):
    """The exactness check has teeth: a plain causal mask over a packed row leaks across prompts."""
    prompts = prompts_of([6, 6], seed=2)
    b = pp.prepacked(prompts, 0, capacity=12)
    b.attention_mask = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    out = pp.prefill_logits(tiny_llama, b, "prepacked")
    second = next(k for k, (_, start) in enumerate(b.where) if start > 0)   # the prompt packed after another
    assert (out[second] - pp.single_prompt_reference(tiny_llama, prompts[second], "cpu")).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["prepacked", "varlen"])
def test_unpacked_caches_decode_like_lone_prefills(tiny_llama, layout):
    prompts = prompts_of([4, 9, 2, 6], seed=3)
    b = pp.make_batch(layout, prompts, 0)
    caches, last = pp.packed_caches(tiny_llama, b, layout)
    for k, p in enumerate(prompts):
        with torch.inference_mode():
            lone = tiny_llama(input_ids=torch.tensor([p]), use_cache=True)
        want = pp.greedy_continue(tiny_llama, lone.past_key_values, lone.logits[0, -1], len(p), 5)
        assert pp.greedy_continue(tiny_llama, caches[k], last[k], len(p), 5) == want


def test_sample_lengths_shapes_the_mix():
    rng = np.random.default_rng(0)
    narrow = pp.sample_lengths("uniform", 2000, 100, 1000, rng, lo=0.8, hi=1.2)
    tail = pp.sample_lengths("lognormal", 2000, 100, 1000, rng, sigma=1.0)
    assert 80 <= narrow.min() and narrow.max() <= 120
    assert abs(tail.mean() - 100) < 10 and tail.max() / tail.mean() > 4
    with pytest.raises(ValueError, match="valid: uniform, lognormal, constant"):
        pp.sample_lengths("zipf", 3, 10, 20, rng)
