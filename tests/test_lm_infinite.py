"""LM-Infinite's experiment machinery on a tiny random Llama: arms, shared-prefix scoring, metrics."""
import numpy as np
import torch

from tokenbook.longctx import lm_infinite as li
from tokenbook.longctx import patterns as pt




def test_arms_are_the_four_modes(tiny_llama):
    a = li.arms(tiny_llama, train_len=16, n_global=2)
    assert list(a) == list(li.ARMS)
    assert a["window_only"].sinks == 0 and a["lambda_nocap"].cap is None and a["lm_infinite"].cap == 16
    assert all(p.window == 16 for n, p in a.items() if n != "vanilla")


def test_shared_prefix_gives_the_one_pass_logits(tiny_llama):
    """Computing the first L positions once (dense) and continuing per arm is exact."""
    ids = torch.randint(0, 97, (60,), generator=torch.Generator().manual_seed(3))
    modes = li.arms(tiny_llama, train_len=16, n_global=2, chunk=7)
    shared = li.arm_logits(tiny_llama, ids, modes, 30, shared=16)
    for name, p in modes.items():
        with torch.inference_mode(), pt.apply(tiny_llama, p):
            full = tiny_llama(input_ids=ids[None]).logits[0, 30:].float()
        torch.testing.assert_close(shared[name], full, atol=1e-4, rtol=1e-4)
    assert (shared["lm_infinite"] - shared["vanilla"]).abs().max() > 1e-3


def test_arms_agree_within_the_training_length(tiny_llama):
    ids = torch.randint(0, 97, (16,), generator=torch.Generator().manual_seed(4))
    out = li.arm_logits(tiny_llama, ids, li.arms(tiny_llama, train_len=16, n_global=2), 5, shared=4)
    for name in li.ARMS:
        torch.testing.assert_close(out[name], out["vanilla"], atol=1e-5, rtol=1e-5)


def test_target_nll_and_passkey_hits():
    ids = torch.tensor([3, 1, 2, 0])
    logits = torch.full((4, 5), -10.0)
    logits[0, 1] = logits[1, 2] = logits[2, 4] = 10.0           # row t predicts token t + 1
    nll = li.target_nll(logits, ids, 3)
    assert nll.shape == (3,) and nll[0] < 1e-3 and nll[1] < 1e-3 and nll[2] > 10
    assert li.passkey_hits(logits, [2, 4]) and not li.passkey_hits(logits, [2, 0])


def test_ppl_ratio_is_exp_of_mean_difference():
    from tokenbook.chapters.lm_infinite import ppl_ratio
    a, b = np.array([2.0, 2.2, 1.8, 2.0]), np.array([1.0, 1.1, 0.9, 1.0])
    e = ppl_ratio(a, b)
    assert abs(e.value - np.e) < 1e-9 and e.lo <= e.value <= e.hi
