"""MrT5's delete gate, soft vs hard deletion, the baselines' deletion masks, the controller, span corruption."""
import numpy as np
import pytest
import torch

from tokenbook.tokenization import mrt5 as M


def tiny(**kw) -> M.ByteEncDec:
    torch.manual_seed(0)
    c = dict(d_model=32, n_head=4, d_ff=64, enc_layers=4, dec_layers=2, gate_layer=2, max_enc_len=80, max_dec_len=24)
    c.update(kw)
    return M.ByteEncDec(M.MrT5Config(**c)).eval()


def batch(B=4, L=64, seed=0, density=0.15, span=5.0):
    rng = np.random.default_rng(seed)
    w = rng.integers(M.OFFSET, M.OFFSET + 256, size=(B, L))
    return M.corrupt_batch(w, rng, density, span)


# --- span corruption ---------------------------------------------------------------------------------

@pytest.mark.parametrize("L,density,span", [(64, 0.15, 5.0), (129, 0.15, 20.0), (10, 0.5, 1.0), (7, 0.15, 3.0)])
def test_span_corruption_round_trip_and_lengths(L, density, span):
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = rng.integers(M.OFFSET, M.OFFSET + 256, size=L)
        enc, tgt = M.span_corrupt(w, rng, density, span)
        n_noise, n_spans = M.span_lengths(L, density, span)
        assert len(enc) == L - n_noise + n_spans + 1 and len(tgt) == n_noise + n_spans + 1
        assert enc[-1] == M.EOS and tgt[-1] == M.EOS
        # rebuild the window: each sentinel in the input is replaced by the target's bytes after it
        pieces, cur = {}, None
        for t in tgt[:-1]:
            if t >= M.SENTINEL0:
                cur = int(t)
                pieces[cur] = []
            else:
                pieces[cur].append(int(t))
        out = []
        for e in enc[:-1]:
            out.extend(pieces[int(e)] if e >= M.SENTINEL0 else [int(e)])
        assert out == w.tolist()
        assert sorted(pieces) == list(range(M.SENTINEL0, M.SENTINEL0 + n_spans))
        assert all(len(p) >= 1 for p in pieces.values())


def test_span_corruption_rejects_bad_values():
    with pytest.raises(ValueError):
        M.span_lengths(64, 1.5, 3)
    with pytest.raises(ValueError):
        M.span_lengths(64, 0.15, 0.5)


# --- baseline deletion masks -------------------------------------------------------------------------

@pytest.mark.parametrize("T", [7, 56, 111, 224])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.7, 0.8])
def test_random_and_stride_delete_the_exact_ratio(T, ratio):
    want = M.n_deleted(T, ratio)
    assert want == min(round(ratio * T), T - 1)
    r = M.random_keep(16, T, ratio, np.random.default_rng(0))
    s = M.stride_keep(16, T, ratio)
    assert ((~r).sum(1) == want).all() and ((~s).sum(1) == want).all()


def test_stride_is_every_kth_and_random_differs_per_row():
    s = M.stride_keep(2, 10, 0.5)[0]
    assert s.tolist() == [True, False] * 5
    assert M.stride_keep(1, 9, 2 / 3)[0].nonzero().flatten().tolist() == [0, 3, 6]
    r = M.random_keep(8, 100, 0.5, np.random.default_rng(0))
    assert len({tuple(row.tolist()) for row in r}) == 8
    with pytest.raises(ValueError):
        M.random_keep(1, 10, 1.0, np.random.default_rng(0))


def test_compact_keeps_order_and_masks_padding():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    keep = torch.tensor([[True, False, True, True, False], [False, False, True, False, False]])
    xk, bias, idx = M.compact(x, keep)
    assert xk.shape == (2, 3, 1)
    assert xk[0, :, 0].tolist() == [0.0, 2.0, 3.0] and idx[0].tolist() == [0, 2, 3]
    assert xk[1, 0, 0].item() == 7.0
    assert bias[0].tolist() == [0.0, 0.0, 0.0]
    assert bias[1, 0] == 0 and torch.isinf(bias[1, 1:]).all()


# --- soft vs hard deletion -------------------------------------------------------------------------------

def test_softmax1_matches_its_formula():
    torch.manual_seed(0)
    att = M.Attention(16, 2)
    x, bias = torch.randn(3, 5, 16), torch.randn(3, 5)
    got = att(x, key_bias=bias, softmax1=True)
    q = att.q(x).view(3, 5, 2, 8).transpose(1, 2)
    k = att.k(x).view(3, 5, 2, 8).transpose(1, 2)
    v = att.v(x).view(3, 5, 2, 8).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / 8 ** 0.5 + bias[:, None, None, :]
    w = logits.exp() / (1 + logits.exp().sum(-1, keepdim=True))
    want = att.o((w @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _gate_pattern(B, T, seed=0):
    g = torch.zeros(B, T)
    keep = torch.from_numpy(np.random.default_rng(seed).random((B, T)) > 0.45)
    keep[:, 0] = True
    g[~keep] = -30.0
    return g, keep


@pytest.mark.parametrize("softmax1", [True, False])
def test_hard_deletion_equals_soft_deletion_at_minus_infinity(softmax1):
    """Hard deletion (gather kept rows, pad) computes exactly what the training-time mask computes
    when deleted keys get -inf: in later encoder layers and in the decoder's cross-attention."""
    m = tiny(softmax1=softmax1)
    enc_ids, tgt = batch()
    g, keep = _gate_pattern(*enc_ids.shape)
    inf_gate = torch.where(keep, 0.0, float("-inf"))
    with torch.no_grad():
        ce_hard, h = m(enc_ids, tgt, "hard", gate=g)
        ce_soft, s = m(enc_ids, tgt, "soft", gate=inf_gate)
        ce_keep, k = m(enc_ids, tgt, "keep", keep=keep)
    torch.testing.assert_close(ce_hard, ce_soft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ce_hard, ce_keep, atol=0, rtol=0)
    for b in range(len(enc_ids)):
        n = int(keep[b].sum())
        torch.testing.assert_close(h.hidden[b, :n], s.hidden[b, keep[b]], atol=1e-5, rtol=1e-5)
        assert h.index[b, :n].tolist() == keep[b].nonzero().flatten().tolist()


def test_soft_gate_at_k_matches_hard_deletion():
    """The training computation (finite gate k = -30 on deleted keys, any value above the threshold
    on kept ones) is the inference computation up to e^(5-30): what MrT5 learns with soft deletion
    carries over to hard deletion."""
    m = tiny()
    enc_ids, tgt = batch(seed=3)
    g, keep = _gate_pattern(*enc_ids.shape, seed=3)
    g = torch.where(keep, -10 * torch.rand(g.shape), g)    # kept gates anywhere above the threshold
    with torch.no_grad():
        ce_hard, _ = m(enc_ids, tgt, "hard", gate=g)
        ce_soft, _ = m(enc_ids, tgt, "soft", gate=g)
    torch.testing.assert_close(ce_soft, ce_hard, atol=1e-4, rtol=1e-4)


def test_kept_outputs_match_a_run_without_the_deleted_tokens():
    """Batched hard deletion (variable kept lengths, padding) = running the layers after the gate
    on each sequence's kept tokens alone, with no padding at all."""
    m = tiny()
    enc_ids, tgt = batch(B=5, seed=4)
    g, keep = _gate_pattern(*enc_ids.shape, seed=4)
    keep[1, 10:] = False            # one much shorter row: lots of padding in the batch
    g[1, 10:] = -30.0
    with torch.no_grad():
        out = m.encode(enc_ids, "hard", gate=g)
        assert out.hidden.shape[1] == int(keep.sum(1).max()) < enc_ids.shape[1]
        for b in range(len(enc_ids)):
            ids = enc_ids[b:b + 1]
            x = m.embed(ids) + m.enc_pos(torch.arange(ids.shape[1]))
            for blk in m.encoder[:m.cfg.gate_layer]:
                x = blk(x, None, m.cfg.logit_cap)
            x = x[:, keep[b]]
            for blk in m.encoder[m.cfg.gate_layer:]:
                x = blk(x, None, m.cfg.logit_cap)
            n = int(keep[b].sum())
            torch.testing.assert_close(out.hidden[b, :n], m.enc_ln(x)[0], atol=1e-5, rtol=1e-5)


def test_learned_gate_hard_deletion_shortens_the_sequence():
    m = tiny()
    enc_ids, tgt = batch(seed=5)
    with torch.no_grad():
        full = m.encode(enc_ids, "none")
        assert m.encode(enc_ids, "hard").hidden.shape[1] == enc_ids.shape[1]   # init: gates ~0, nothing deleted
        # shift the gate's bias so that about half of the scores cross the threshold
        x = m.embed(enc_ids) + m.enc_pos(torch.arange(enc_ids.shape[1]))
        for blk in m.encoder[:m.cfg.gate_layer]:
            x = blk(x, None, m.cfg.logit_cap)
        s = m.gate.g * m.gate.proj(m.gate.ln(x))
        m.gate.proj.bias -= float(s.median()) / m.gate.g
        out = m.encode(enc_ids, "hard")
        r = M.deletion_ratio(out, enc_ids)
    assert (r > 0).all() and (r < 1).all() and abs(float(r.mean()) - 0.5) < 0.05
    assert out.hidden.shape[1] == int(out.lengths.max()) < full.hidden.shape[1]
    torch.testing.assert_close(out.lengths.float(), (1 - r) * enc_ids.shape[1])


def test_gate_gets_gradient_only_from_soft_deletion():
    m = tiny().train()
    enc_ids, tgt = batch(seed=6)
    ce, _ = m(enc_ids, tgt, "soft")
    ce.mean().backward()
    assert m.gate.proj.weight.grad is not None and m.gate.proj.weight.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)
    ce, _ = m(enc_ids, tgt, "none")
    ce.mean().backward()
    assert m.gate.proj.weight.grad is None


def test_bad_config_and_mode():
    with pytest.raises(ValueError):
        M.MrT5Config(enc_layers=4, gate_layer=4)
    with pytest.raises(ValueError):
        M.MrT5Config(gate_scale=30.0)
    m = tiny()
    enc_ids, tgt = batch()
    with pytest.raises(ValueError):
        m.encode(enc_ids, "sometimes")
    with pytest.raises(ValueError):
        m.encode(enc_ids, "keep")


# --- the controller --------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_controller_steers_a_monotone_plant_to_target(target):
    """Deletion ratio = 1 - exp(-3 alpha) (more weight, more deletion): the controller settles at target."""
    ctl = M.PIController(target, kp=0.5, ki=0.02)
    ratio, seen = 0.0, []
    for _ in range(600):
        ctl.update(ratio)
        ratio = 1 - np.exp(-3 * ctl.alpha)
        seen.append(ratio)
    assert abs(np.mean(seen[-50:]) - target) < 0.02
    # and from above: alpha stays clamped at >= 0 and the ratio comes down
    ctl2 = M.PIController(0.0, kp=0.5, ki=0.02)
    assert ctl2.update(0.9) == 0.0


def test_controller_moves_a_real_gate_toward_target():
    """A short MrT5 training run (tiny model, random bytes): the batch deletion ratio climbs from 0
    toward the target and alpha rises while it is below."""
    torch.manual_seed(0)
    m = M.ByteEncDec(M.MrT5Config(d_model=32, n_head=4, d_ff=64, enc_layers=3, dec_layers=1, gate_layer=1,
                                  max_enc_len=40, max_dec_len=12))
    rng = np.random.default_rng(0)
    stream = torch.from_numpy(rng.integers(M.OFFSET, M.OFFSET + 26, size=32 * 40 * 20))
    cfg = dict(steps=80, batch_size=16, seq_len=32, lr=3e-3, warmup_steps=5, log_every=40, progress=False)
    _, hist = M.train_task(m, "gate", stream, cfg, noise_density=0.15, mean_span=3, seed=0, ratio=0.5,
                           controller=dict(kp=0.5, ki=0.02))
    ratios = [h["ratio"] for h in hist]
    assert ratios[0] < 0.05
    assert np.mean(ratios[-10:]) > 0.25
    assert max(h["alpha"] for h in hist) > 0


def test_arms_see_identical_examples():
    """Span corruption uses the task's own RNG: two arms with the same seed get the same batches."""
    m = tiny()
    a = M.CorruptionTask(m, "none", noise_density=0.15, mean_span=3, seed=7)
    b = M.CorruptionTask(m, "stride", noise_density=0.15, mean_span=3, seed=7, ratio=0.5)
    w = np.random.default_rng(0).integers(3, 259, size=(4, 32))
    for _ in range(3):
        ea, ta = M.corrupt_batch(w, a.rng_data, 0.15, 3)
        eb, tb = M.corrupt_batch(w, b.rng_data, 0.15, 3)
        assert torch.equal(ea, eb) and torch.equal(ta, tb)


def test_denoise_objective_masks_in_place_and_targets_the_window():
    rng = np.random.default_rng(2)
    w = rng.integers(M.OFFSET, M.OFFSET + 256, size=50)
    enc, tgt = M.mask_corrupt(w, rng, 0.2, 3.0)
    n_noise, _ = M.span_lengths(50, 0.2, 3.0)
    assert len(enc) == len(tgt) == 51 and enc[-1] == tgt[-1] == M.EOS
    assert tgt[:-1].tolist() == w.tolist()
    masked = enc[:-1] == M.SENTINEL0
    assert masked.sum() == n_noise and (enc[:-1][~masked] == w[~masked]).all()
    with pytest.raises(ValueError):
        M.corrupt_batch(w[None], rng, 0.2, 3.0, objective="shuffle")


def test_capped_logits_cannot_revive_a_deleted_key():
    """With logits bounded by the cap, a key at gate value k = -30 keeps a weight below e^(5-30),
    however large the model makes q.k; without the cap, large weights undo the deletion."""
    torch.manual_seed(0)
    att = M.Attention(16, 2)
    with torch.no_grad():
        for lin in (att.q, att.k):
            lin.weight.copy_(torch.eye(16) * 30)       # huge logits for aligned keys
    x = torch.randn(1, 6, 16)
    gone = torch.full((1, 6), -30.0)
    capped = att(x, key_bias=gone, softmax1=True, cap=5.0)
    assert capped.abs().max() < 1e-6
    assert att(x, key_bias=gone, softmax1=True).abs().max() > 1e-2


def test_capped_attention_matches_sdpa_without_cap_effect():
    """With a cap far above the logits, the written-out attention equals the SDPA path (both
    softmax and softmax_1, with a key bias and causal masking)."""
    torch.manual_seed(1)
    att = M.Attention(16, 4)
    x, bias = torch.randn(2, 7, 16), torch.randn(2, 7)
    for sm1 in (True, False):
        torch.testing.assert_close(att(x, key_bias=bias, softmax1=sm1, cap=1e6),
                                   att(x, key_bias=bias, softmax1=sm1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att(x, causal=True, cap=1e6), att(x, causal=True), atol=1e-5, rtol=1e-5)
