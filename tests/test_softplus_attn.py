"""LSSA / LSSAR inside a Llama (tokenbook.longctx.softplus) and the chapter's evaluation plumbing."""
import math

import pytest
import torch
import torch.nn.functional as F

from tokenbook.kernels.softplus_attention_reference import softplus_attention_reference
from tokenbook.longctx import lengths
from tokenbook.longctx import softplus as sp

CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=2, max_position_embeddings=256)


def qkv(B=2, H=3, T=17, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g) * 2 for _ in range(3)]


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_weights_are_causal_rows_that_sum_to_one(p):
    q, k, _ = qkv()
    a = sp.lssa_weights(q, k, p=p)
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5)
    below = torch.ones(a.shape[-1], a.shape[-1], dtype=torch.bool).tril()
    assert (a[..., ~below] == 0).all() and (a[..., below] > 0).all()


@pytest.mark.parametrize("p", [1.0, 2.5])
def test_weights_match_the_kernel_twin(p):
    q, k, v = qkv(T=23)
    ours = sp.lssa_weights(q, k, p=p) @ v
    assert torch.allclose(ours, softplus_attention_reference(q, k, v, p=p), atol=1e-5)


def test_formula_by_hand_and_length_factor():
    """One row written out: softplus(log(N)/log(D) · q·k/√D), l1-normalised; row 0 has λ = 0."""
    q, k, _ = qkv(B=1, H=1, T=5, D=16)
    a = sp.lssa_weights(q, k)
    i = 4
    s = (k[0, 0, : i + 1] @ q[0, 0, i]) / 4.0
    w = F.softplus(math.log(5) / math.log(16) * s)
    assert torch.allclose(a[0, 0, i, : i + 1], w / w.sum(), atol=1e-6)
    assert a[0, 0, 0, 0] == 1.0


def test_power_sharpens_and_equals_renormalised_power_of_lssa():
    q, k, _ = qkv(T=30)
    a1, a3 = sp.lssa_weights(q, k, p=1.0), sp.lssa_weights(q, k, p=3.0)
    re = a1.pow(3)
    re = re / re.sum(-1, keepdim=True)
    assert torch.allclose(a3, re, atol=1e-5)
    ent = lambda a: -(a.clamp_min(1e-30).log() * a).sum(-1)[..., 1:]  # noqa: E731
    assert (ent(a3) <= ent(a1) + 1e-6).all() and (ent(a3) < ent(a1) - 1e-3).any()
    assert (a3.max(-1).values >= a1.max(-1).values - 1e-6).all()


def test_model_attention_is_the_op_and_reweighting_switches_p():
    model = sp.build_lm(CFG, 40, "lssa")
    x = torch.randint(3, 40, (2, 19))
    base = model(input_ids=x).logits
    with sp.reweighting(model, 1.0):
        same = model(input_ids=x).logits
    with sp.reweighting(model, 3.0):
        sharp = model(input_ids=x).logits
    assert torch.equal(base, same)                       # p = 1 is LSSA itself
    assert not torch.allclose(base, sharp, atol=1e-4)    # p = 3 changes the model's output
    assert model.config.softplus_p == 1.0                # restored
    with pytest.raises(ValueError):
        with sp.reweighting(sp.build_lm(CFG, 40, "softmax"), 2.0):
            pass


def test_attention_forward_equals_reference_on_random_inputs():
    model = sp.build_lm(CFG, 40, "lssa")
    attn = model.model.layers[0].self_attn
    q, k, v = qkv(B=2, H=2, T=11, D=16)
    model.config.softplus_p = 2.0
    out, _ = sp._softplus_forward(attn, q, k, v, None, scaling=0.25)
    ref = softplus_attention_reference(q, k, v, p=2.0, scale=0.25)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)


def test_causal_model_future_tokens_do_not_change_the_past():
    model = sp.build_lm(CFG, 40, "lssa").eval()
    x = torch.randint(3, 40, (1, 16))
    y = x.clone()
    y[0, 10:] = torch.randint(3, 40, (6,))
    with torch.no_grad():
        a, b = model(input_ids=x).logits, model(input_ids=y).logits
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-5)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-3)


def test_softmax_arm_has_the_same_weights_at_init():
    a, b = sp.build_lm(CFG, 40, "softmax"), sp.build_lm(CFG, 40, "lssa")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randint(3, 40, (1, 12))
    with torch.no_grad():   # same weights, different attention: different outputs
        assert not torch.allclose(a(input_ids=x).logits, b(input_ids=x).logits, atol=1e-4)
    with pytest.raises(ValueError):
        sp.build_lm(CFG, 40, "sigmoid")


def test_a_few_training_steps_lower_the_loss():
    from tokenbook.train import TrainConfig, train
    model = sp.build_lm(CFG, 40, "lssa")
    g = torch.Generator().manual_seed(1)
    tokens = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10] * 200) + torch.randint(0, 2, (1600,), generator=g) * 20
    res = train(model, tokens, TrainConfig(steps=30, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=2,
                                           log_every=5, progress=False), val_tokens=tokens[:512])
    assert res.log[-1]["loss"] < res.log[0]["loss"] - 0.5


def test_nll_by_window_length_scores_the_same_text():
    model = sp.build_lm(CFG, 40, "softmax")
    tokens = torch.randint(3, 40, (3 * 64 + 5,))
    out = lengths.nll_by_window_length(model, tokens, [16, 32, 64], 64, batch_tokens=100)
    assert set(out) == {16, 32, 64} and all(v.shape == (3,) for v in out.values())
    # window = block: block 1 equals the plain loss of that block
    x = tokens[64:128][None]
    with torch.no_grad():
        ref = model(input_ids=x, labels=x).loss
    assert abs(out[64][1] - float(ref)) < 1e-5
    with pytest.raises(ValueError):
        lengths.nll_by_window_length(model, tokens, [24, 64], 64)
