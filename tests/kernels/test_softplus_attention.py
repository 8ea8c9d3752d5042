"""Softplus attention (LSSA / LSSAR): the Triton forward and backward kernels against the PyTorch
twin (outputs and every gradient), and the twin against the formula written out by loops.

Kernel tests run wherever conftest.KERNEL_DEVICES says a kernel can (CPU under
TRITON_INTERPRET=1, or CUDA). torch.empty* is NaN-poisoned by conftest. Tolerances:
conftest.OP_TOLERANCES ("softplus_attention", "softplus_attention_grad").
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenbook.kernels.softplus_attention import softplus_attention
from tokenbook.kernels.softplus_attention_reference import softplus_attention_reference

OP, OP_GRAD = "softplus_attention", "softplus_attention_grad"
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def make_qkv(B, H, T, D, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, D, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)
                 for _ in range(3))


# name: (B, H, T, D)
SHAPES = {
    "T1": (1, 2, 1, 64),
    "T45-odd-b2": (2, 1, 45, 64),
    "T130-d128": (1, 2, 130, 128),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("p", [1.0, 2.0], ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
def test_forward_matches_twin(kernel_device, assert_close_op, shape, p, dtype):
    q, k, v = make_qkv(*SHAPES[shape], dtype=dtype, device=kernel_device)
    out = softplus_attention(q, k, v, p=p, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_op(OP, f"{shape}/p{p:g}/{DTYPE_IDS[dtype]}", softplus_attention_reference(q, k, v, p=p), out)


GRAD_CASES = {
    # name: (B, H, T, D, dtype, keyword arguments)
    "T45-p1-fp32": (2, 1, 45, 32, torch.float32, dict(p=1.0)),
    "T70-p2-fp32-d64": (1, 2, 70, 64, torch.float32, dict(p=2.0)),
    "T33-p3-non-causal-fp32": (1, 2, 33, 32, torch.float32, dict(p=3.0, causal=False)),
    "T50-p2-blocks-16x32-fp32": (1, 1, 50, 32, torch.float32, dict(p=2.0, block_m=16, block_n=32)),
    "T50-p2-blocks-32x16-fp32": (1, 1, 50, 32, torch.float32, dict(p=2.0, block_m=32, block_n=16)),
    "T40-p1.5-scale-log_base-fp32": (1, 2, 40, 16, torch.float32, dict(p=1.5, scale=0.5, log_base=16.0)),
    "T1-p2-fp32": (1, 2, 1, 16, torch.float32, dict(p=2.0)),
    "T60-p2-bf16": (1, 2, 60, 32, torch.bfloat16, dict(p=2.0)),
}


@pytest.mark.parametrize("case", list(GRAD_CASES), ids=str)
def test_gradients_match_twin(kernel_device, assert_close_op, case):
    B, H, T, D, dtype, kwargs = GRAD_CASES[case]
    q, k, v = make_qkv(B, H, T, D, dtype, kernel_device, requires_grad=True)
    out = softplus_attention(q, k, v, backend="triton", **kwargs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    twin_kwargs = {key: val for key, val in kwargs.items() if key in ("p", "causal", "scale", "log_base")}
    ref = softplus_attention_reference(q, k, v, **twin_kwargs)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    assert_close_op(OP, f"{case}/out", ref, out)
    for name, r, g in zip(("dq", "dk", "dv"), ref_grads, grads):
        assert g.dtype == dtype
        assert_close_op(OP_GRAD, f"{case}/{name}", r, g)


def test_outputs_and_gradients_are_completely_written(kernel_device):
    assert torch.empty(3).isnan().all(), "conftest should NaN-poison torch.empty"
    q, k, v = make_qkv(1, 2, 37, 32, torch.float32, kernel_device, requires_grad=True)
    out = softplus_attention(q, k, v, p=2.0, backend="triton")
    out.square().sum().backward()
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()


def test_auto_backend_on_cpu_is_the_twin():
    q, k, v = make_qkv(1, 2, 20, 16)
    assert torch.equal(softplus_attention(q, k, v, p=2.0), softplus_attention_reference(q, k, v, p=2.0))


def test_large_logits_stay_finite(kernel_device):
    # Softplus grows linearly, so large logits need no running max (unlike exp).
    q, k, v = make_qkv(1, 1, 40, 16, torch.float32, kernel_device)
    out = softplus_attention(q * 30, k * 30, v, p=2.0, backend="triton")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, softplus_attention_reference(q * 30, k * 30, v, p=2.0), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# The twin against the formula, written out
# ----------------------------------------------------------------------------------------------

def loop_softplus_attention(q, k, v, p, causal=True, log_base=None):
    """The module docstring's formula, one row at a time, in float64."""
    B, H, T, D = q.shape
    log_base = D if log_base is None else log_base
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for i in range(T):
        keys = i + 1 if causal else T
        lam = math.log(keys) / math.log(log_base)
        s = (q[:, :, i:i + 1].double() @ k[:, :, :keys].double().transpose(-1, -2)) / math.sqrt(D)
        w = torch.log1p(torch.exp(lam * s)) ** p
        out[:, :, i] = ((w / w.sum(-1, keepdim=True)) @ v[:, :, :keys].double())[:, :, 0]
    return out


@pytest.mark.parametrize("p,causal", [(1.0, True), (2.0, True), (3.0, False)], ids=["p1", "p2", "p3-non-causal"])
def test_twin_matches_the_written_out_formula(p, causal):
    q, k, v = make_qkv(2, 2, 23, 8)
    torch.testing.assert_close(softplus_attention_reference(q, k, v, p=p, causal=causal),
                               loop_softplus_attention(q, k, v, p, causal).float(), atol=1e-5, rtol=1e-5)


def test_twin_properties():
    q, k, v = make_qkv(1, 1, 30, 16)
    # Weights are an l1-normalised distribution: constant values pass through unchanged.
    ones = torch.ones_like(v)
    torch.testing.assert_close(softplus_attention_reference(q, k, ones, p=2.0), ones)
    # The first row sees one key: it returns that value exactly.
    torch.testing.assert_close(softplus_attention_reference(q, k, v)[:, :, 0], v[:, :, 0])
    # A larger power sharpens: the weight entropy of the last row falls as p grows.
    def entropy(p):
        identity = torch.eye(30)[None, None]  # v = identity rows -> each output row is its weights
        w = softplus_attention_reference(q, k, identity, p=p)[0, 0, -1]
        return -(w * w.clamp_min(1e-30).log()).sum().item()
    assert entropy(1.0) > entropy(2.0) > entropy(4.0)
    # The length factor is log(N) / log(D): at N = D it is 1, so the last of D rows is plain
    # softplus of the scaled logits.
    q, k, v = make_qkv(1, 1, 16, 16)
    s = (q @ k.transpose(-1, -2))[0, 0, -1] / 4.0
    w = F.softplus(s)
    torch.testing.assert_close(softplus_attention_reference(q, k, v)[0, 0, -1], (w / w.sum()) @ v[0, 0])


@pytest.mark.parametrize("case,error", [("p-below-1", ValueError), ("log-base-1", ValueError),
                                        ("shape-mismatch", ValueError), ("rank-3", ValueError),
                                        ("float64", TypeError), ("unknown-backend", ValueError)],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise(case, error):
    q, k, v = make_qkv(1, 1, 8, 16)
    kwargs = {}
    if case == "p-below-1":
        kwargs = dict(p=0.5)
    elif case == "log-base-1":
        kwargs = dict(log_base=1.0)
    elif case == "shape-mismatch":
        k = k[:, :, :4]
    elif case == "rank-3":
        q = q[0]
    elif case == "float64":
        q, k, v = q.double(), k.double(), v.double()
    elif case == "unknown-backend":
        kwargs = dict(backend="cuda")
    with pytest.raises(error):
        softplus_attention(q, k, v, **kwargs)


# ----------------------------------------------------------------------------------------------
# The benchmark's pure parts (bench_softplus_attention), run on CPU
# ----------------------------------------------------------------------------------------------

from tokenbook.kernels import bench_softplus_attention as bench  # noqa: E402


def test_bench_torch_version_is_the_twin():
    q, k, v = (torch.randn(1, 2, 37, 16) for _ in range(3))
    for p in (1.0, 2.0):
        ref = softplus_attention_reference(q, k, v, p=p, log_base=16.0)
        assert torch.allclose(bench._torch_softplus(q, k, v, p, 16.0), ref, atol=1e-5)


def test_bench_flops_and_targets():
    assert bench.causal_flops(4, 2, 8) == 4 * 8 * 2 * 10
    assert bench.causal_flops(4, 2, 8, backward=True) == pytest.approx(3.5 * 4 * 8 * 2 * 10)
    cases = [dict(case="a", seq_len=16384, kernel_ms=2.0, torch_ms=4.0, sdpa_flash_ms=0.5),
             dict(case="b", seq_len=1024, kernel_ms=2.0, torch_ms=1.0, sdpa_flash_ms=0.1)]
    rows = bench.targets(cases)
    assert [(r["case"], r["met"]) for r in rows] == [("a", True), ("a", False), ("b", False)]


def test_bench_end_to_end_smoke_on_cpu(tmp_path):
    pytest.importorskip("matplotlib")
    res = bench.run_benchmark(device=torch.device("cpu"), seq_lens=[64], powers=[1.0, 2.0], heads=2, head_dim=16,
                              dense_backends=("math",), warmup=0, reps=1, log=lambda line: None)
    cases = res["cases"]
    assert [c["case"] for c in cases] == ["forward/N64/p1", "forward+backward/N64/p1",
                                          "forward/N64/p2", "forward+backward/N64/p2"]
    assert all(c["errors"] == "" for c in cases), [c["errors"] for c in cases]
    assert cases[0]["max_abs_diff_vs_torch"] < 1e-5 and cases[1]["sdpa_math_ms"] > 0
    bench.plot(cases, tmp_path / "softplus_attention.png")
    assert (tmp_path / "softplus_attention.png").stat().st_size > 1000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_bench_without_cuda_exits_2(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path / "bench")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
