"""Tests of the RoPE bases and the Lines task of the `giraffe-rope` chapter (tokenbook.longctx.rope_variants)."""
import math
import random

import pytest
import torch

from tokenbook.longctx import rope_variants as rv


def tiny_llama(rope_parameters=None, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=2, vocab_size=259, max_position_embeddings=512)
    if rope_parameters is not None:
        kw["rope_parameters"] = rope_parameters
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def test_default_matches_transformers_and_scale_one_is_stock():
    m = tiny_llama()
    assert torch.allclose(rv.get_basis(m), rv.inv_freq("default", 16), rtol=1e-6)
    x = torch.randint(3, 259, (2, 40))
    ref = m(input_ids=x).logits
    rv.apply_basis(m, rv.inv_freq("linear", 16, scale=1.0))
    assert torch.allclose(m(input_ids=x).logits, ref, atol=1e-6)


def test_linear_is_base_over_scale_and_equals_transformers_linear_rope():
    f = rv.inv_freq("default", 16)
    lin = rv.inv_freq("linear", 16, scale=4.0)
    assert torch.allclose(lin, f / 4)
    hf = tiny_llama({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    assert torch.allclose(rv.get_basis(hf), lin, rtol=1e-6)
    # the same weights with our basis written in give the same logits as transformers' linear RoPE
    ours = tiny_llama()
    ours.load_state_dict(hf.state_dict())
    rv.apply_basis(ours, lin)
    x = torch.randint(3, 259, (1, 64))
    assert torch.allclose(ours(input_ids=x).logits, hf(input_ids=x).logits, atol=1e-5)
    # and they differ from the stock model (the basis is really used)
    stock = tiny_llama()
    stock.load_state_dict(hf.state_dict())
    rv.apply_basis(stock, rv.inv_freq("default", 16))
    assert not torch.allclose(stock(input_ids=x).logits, hf(input_ids=x).logits, atol=1e-4)


def test_truncated_zeroes_exactly_the_slow_frequencies_and_sets_the_middle_band_to_rho():
    T, d = 64, 64
    f = rv.inv_freq("default", d)
    t = rv.inv_freq("truncated", d, truncate_len=T)
    b = 2 * math.pi / T
    keep, zero = f >= b, f < b / 8
    mid = ~keep & ~zero
    assert keep.any() and zero.any() and mid.any()
    assert torch.equal(t[keep], f[keep])
    assert torch.all(t[zero] == 0)
    assert torch.allclose(t[mid], torch.full_like(t[mid], b / 16))
    # every kept frequency completes at least one cycle within T positions; no non-zero one is slower than rho
    assert torch.all(2 * math.pi / t[keep] <= T + 1e-4)
    assert torch.all(t[t > 0] >= b / 16 - 1e-9)


def test_power_basis_keeps_the_fastest_and_damps_the_slow_ones_more():
    f = rv.inv_freq("default", 32)
    p = rv.inv_freq("power", 32, power=0.5)
    assert p[0] == f[0]
    ratio = p / f
    assert torch.all(ratio[1:] < 1) and torch.all(ratio[1:] <= ratio[:-1])
    assert torch.allclose(ratio, (1 - torch.arange(16) / 16.0) ** 0.5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        rv.inv_freq("xpos", 16)
    with pytest.raises(ValueError):
        rv.inv_freq("truncated", 16)
    with pytest.raises(ValueError):
        rv.apply_basis(tiny_llama(), torch.ones(3))


def test_basis_context_restores():
    m = tiny_llama()
    before = rv.get_basis(m)
    with rv.basis(m, rv.inv_freq("linear", 16, scale=8.0)):
        assert torch.allclose(rv.get_basis(m), before / 8)
    assert torch.equal(rv.get_basis(m), before)


@pytest.mark.parametrize("length", [32, 64, 256, 513])
def test_lines_items_have_exactly_one_right_answer(length):
    rng = random.Random(length)
    for _ in range(50):
        it = rv.lines_item(length, rng)
        assert len(it["text"]) == length and it["text"] == it["prompt"] + it["answer"]
        assert rv.lines_answers(it["prompt"], it["key"]) == [it["answer"]]
        assert len(it["answer"]) == 3 and it["answer"].isdigit()
        assert it["prompt"].endswith(f"?{it['key']}:")


def test_lines_too_short_raises():
    with pytest.raises(ValueError):
        rv.lines_item(10, random.Random(0))


def test_mixed_stream_is_aligned_and_contains_items():
    corpus = torch.arange(3, 203).repeat(20)
    s = rv.mixed_stream(corpus, 32, 40, 0.5, seed=1)
    assert s.shape == (40 * 32,)
    seqs = s.view(40, 32)
    q = ord("?") + 3
    is_item = seqs[:, -8] == q    # "?abc:" + 3 digits: the "?" sits 8 from the end
    assert 5 < int(is_item.sum()) < 35
    assert all(0 <= int(v) < 259 for v in s[:100])


def test_lines_correct_scores_an_oracle_and_a_wrong_model():
    items = [rv.lines_item(32, random.Random(i)) for i in range(4)]

    class Oracle(torch.nn.Module):          # predicts each next byte of the true text
        def __init__(self, right):
            super().__init__()
            self.right = right

        def forward(self, input_ids):
            nxt = torch.roll(input_ids, -1, dims=1)
            if not self.right:
                nxt = (nxt + 1) % 259
            logits = torch.nn.functional.one_hot(nxt, 259).float()
            return type("Out", (), {"logits": logits})()

    assert rv.lines_correct(Oracle(True), items) == [True] * 4
    assert rv.lines_correct(Oracle(False), items) == [False] * 4


def test_multi_query_training_items_answer_every_question_consistently():
    rng = random.Random(3)
    for length in (64, 256):
        nq = rv.training_queries(length)
        assert nq >= 3
        for _ in range(20):
            it = rv.lines_item(length, rng, n_queries=nq)
            assert len(it["text"]) == length
            assert rv.lines_answers(it["prompt"], it["key"]) == [it["answer"]]
            lines = [ln.strip() for ln in it["text"].split("\n")]
            table = dict(ln.split(":") for ln in lines if ln and not ln.startswith("?"))
            asked = [ln[1:].split(":") for ln in lines if ln.startswith("?")]
            assert len(asked) == nq and all(table[k] == v for k, v in asked)


def test_one_letter_keys_stay_unique_and_spread_over_long_items():
    rng = random.Random(5)
    for _ in range(20):
        it = rv.lines_item(512, rng, key_len=1, digits=2, sep="")
        assert len(it["text"]) == 512 and it["n_lines"] == len(rv.LETTERS)
        assert rv.lines_answers(it["prompt"], it["key"], key_len=1, sep="") == [it["answer"]]
        lines = [ln for ln in it["prompt"].split("\n")[:-1]]
        assert len({ln.strip()[0] for ln in lines}) == len(lines)          # unique keys
        first_line_end = it["text"].index("\n")
        assert first_line_end < 200                                          # not all padding up front
        assert it["prompt"].endswith(f"?{it['key']}")
