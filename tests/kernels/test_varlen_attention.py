"""Packed (varlen) causal attention: the Triton kernel against its PyTorch twin, the twin against
brute-force dense attention, and the pure parts of the benchmark (bench_varlen_attention).

Kernel tests run wherever conftest.KERNEL_DEVICES says a kernel can: on CPU under
TRITON_INTERPRET=1, on CUDA when a GPU is present. Outputs allocated with torch.empty* are
NaN-poisoned by conftest, so an element the kernel never writes fails the comparison.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tokenbook.kernels import bench_varlen_attention as bench
from tokenbook.kernels.varlen_attention import varlen_attention
from tokenbook.kernels.varlen_attention_reference import varlen_attention_reference

# One table of tolerances: (max-abs error, relative error = ||out - ref|| / ||ref||).
# bf16/fp16 errors are dominated by rounding the output (and P before the PV product).
TOLERANCES = {
    torch.float32: (2e-5, 1e-5),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (4e-2, 1.5e-2),
}
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def assert_close(name, ref, out, dtype=None):
    """Compare in fp32; the message reports the max-abs and relative errors and the tolerances."""
    atol, rtol = TOLERANCES[dtype or out.dtype]
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    ref32, out32 = ref.detach().float().cpu(), out.detach().float().cpu()
    n_bad = int((~torch.isfinite(out32)).sum())
    diff = (ref32 - out32).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    rel = (diff.norm() / ref32.norm().clamp_min(1e-30)).item() if diff.numel() else 0.0
    msg = (f"{name}: max-abs error {max_abs:.3e} (tolerance {atol:.1e}), relative error {rel:.3e} "
           f"(tolerance {rtol:.1e}), non-finite outputs {n_bad}/{out32.numel()}")
    assert n_bad == 0 and max_abs <= atol and rel <= rtol, msg


def cu_from(lengths, device="cpu"):
    return torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))],
                        dtype=torch.int32, device=device)


def make_inputs(lengths, Hq, Hkv, D, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, h, D, generator=gen).to(device=device, dtype=dtype) for h in (Hq, Hkv, Hkv))
    return q, k, v, cu_from(lengths, device)


_rng = random.Random(1234)
LENGTHS = {
    "one-1": [1],
    "one-129": [129],
    "odd-1-7-33-100-129": [1, 7, 33, 100, 129],
    "many-16-short": [_rng.randint(1, 40) for _ in range(16)],
    "empty-seqs-0-17-0-64-0": [0, 17, 0, 64, 0],
}
HEADS = {"mha-h2-kv2": (2, 2), "gqa-h3-kv1": (3, 1)}


# ----------------------------------------------------------------------------------------------
# Kernel vs twin
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("D", [64, 128], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("heads", list(HEADS), ids=str)
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=str)
def test_kernel_matches_twin(kernel_device, lengths, heads, D, dtype):
    q, k, v, cu = make_inputs(LENGTHS[lengths], *HEADS[heads], D, dtype, kernel_device)
    out = varlen_attention(q, k, v, cu, backend="triton")
    ref = varlen_attention_reference(q, k, v, cu)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(f"{lengths}/{heads}/d{D}/{DTYPE_IDS[dtype]}", ref, out)


def _fused_qkv(lengths, Hq, Hkv, D, dtype, device):
    # q, k, v as strided views of one fused projection [T, Hq + 2 Hkv, D], as models produce them.
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(sum(lengths), Hq + 2 * Hkv, D, generator=gen).to(device=device, dtype=dtype)
    return qkv[:, :Hq], qkv[:, Hq:Hq + Hkv], qkv[:, Hq + Hkv:], cu_from(lengths, device)


ODD = LENGTHS["odd-1-7-33-100-129"]
VARIANTS = {
    # name: (lengths, Hq, Hkv, D, dtype, keyword arguments)
    "non-causal-fp32": (ODD, 2, 1, 64, torch.float32, dict(causal=False)),
    "non-causal-bf16": (ODD, 2, 1, 64, torch.bfloat16, dict(causal=False)),
    "fp16": (ODD, 3, 1, 64, torch.float16, {}),
    "smollm2-heads-h9-kv3": ([5, 70, 19], 9, 3, 64, torch.bfloat16, {}),
    "blocks-16x32": (ODD, 2, 1, 32, torch.float32, dict(block_m=16, block_n=32)),
    "blocks-32x16": (ODD, 2, 1, 32, torch.float32, dict(block_m=32, block_n=16)),
    "blocks-128x64": (ODD, 2, 1, 64, torch.float32, dict(block_m=128, block_n=64)),
    "blocks-16x128-non-causal": (ODD, 2, 1, 16, torch.float32, dict(block_m=16, block_n=128, causal=False)),
    "d16": (ODD, 2, 2, 16, torch.float32, {}),
    "d32-bf16": (ODD, 2, 2, 32, torch.bfloat16, {}),
    "scale-0.3": (ODD, 2, 2, 64, torch.float32, dict(scale=0.3)),
    "max-seqlen-larger-than-needed": (ODD, 2, 2, 64, torch.float32, dict(max_seqlen=300)),
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
def test_kernel_variants(kernel_device, variant):
    lengths, Hq, Hkv, D, dtype, kwargs = VARIANTS[variant]
    q, k, v, cu = make_inputs(lengths, Hq, Hkv, D, dtype, kernel_device)
    out = varlen_attention(q, k, v, cu, backend="triton", **kwargs)
    kwargs = {key: val for key, val in kwargs.items() if key in ("causal", "scale")}
    assert_close(variant, varlen_attention_reference(q, k, v, cu, **kwargs), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: DTYPE_IDS[d])
def test_kernel_strided_inputs_and_int64_cu_seqlens(kernel_device, dtype):
    q, k, v, cu = _fused_qkv(ODD, 3, 1, 64, dtype, kernel_device)
    assert not q.is_contiguous()
    out = varlen_attention(q, k, v, cu.long(), backend="triton")
    assert_close("strided q/k/v, int64 cu_seqlens", varlen_attention_reference(q, k, v, cu), out)


def test_output_is_completely_written(kernel_device):
    assert torch.empty(4).isnan().all(), "conftest should NaN-poison torch.empty"
    q, k, v, cu = make_inputs([3, 64, 65, 1], 3, 1, 64, torch.bfloat16, kernel_device)
    out = torch.full_like(q, float("nan"))
    result = varlen_attention(q, k, v, cu, backend="triton", out=out)
    assert result is out
    assert torch.isfinite(out.float()).all(), "the kernel left NaN-poisoned elements unwritten"
    assert_close("out= buffer", varlen_attention_reference(q, k, v, cu), out)
    # And the buffer the wrapper allocates itself (poisoned by conftest's torch.empty_like).
    assert_close("allocated output", varlen_attention_reference(q, k, v, cu),
                 varlen_attention(q, k, v, cu, backend="triton"))


def test_empty_input(kernel_device):
    q, k, v, cu = make_inputs([0, 0], 2, 1, 64, torch.float32, kernel_device)
    assert varlen_attention(q, k, v, cu, backend="triton").shape == (0, 2, 64)


def test_auto_backend_on_cpu_is_the_twin():
    q, k, v, cu = make_inputs(ODD, 6, 2, 64)
    assert torch.equal(varlen_attention(q, k, v, cu), varlen_attention_reference(q, k, v, cu))


# ----------------------------------------------------------------------------------------------
# Isolation and causality
# ----------------------------------------------------------------------------------------------

def _run(backend):
    if backend == "triton":
        return lambda *a, **kw: varlen_attention(*a, backend="triton", **kw)
    return varlen_attention_reference


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_sequences_do_not_influence_each_other(kernel_device, backend):
    attend = _run(backend)
    lengths = [37, 70, 5]
    q, k, v, cu = make_inputs(lengths, 6, 2, 64, torch.float32, kernel_device)
    before = attend(q, k, v, cu)
    a, b = lengths[0], lengths[0] + lengths[1]
    for t in (q, k, v):  # replace sequence 2 (index 1) entirely
        t[a:b] = torch.randn_like(t[a:b]) * 3
    after = attend(q, k, v, cu)
    assert torch.equal(before[:a], after[:a]), "sequence 1 changed when sequence 2 was perturbed"
    assert torch.equal(before[b:], after[b:]), "sequence 3 changed when sequence 2 was perturbed"
    assert not torch.allclose(before[a:b], after[a:b])


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_future_tokens_do_not_influence_the_past(kernel_device, backend):
    attend = _run(backend)
    lengths = [37, 70]
    q, k, v, cu = make_inputs(lengths, 2, 2, 64, torch.float32, kernel_device)
    before = attend(q, k, v, cu)
    last = [36, 106]
    for t in (q, k, v):
        t[last] = torch.randn_like(t[last]) * 3
    after = attend(q, k, v, cu)
    keep = torch.ones(sum(lengths), dtype=torch.bool, device=kernel_device)
    keep[last] = False
    assert torch.equal(before[keep], after[keep])
    assert not torch.allclose(before[last], after[last])


# ----------------------------------------------------------------------------------------------
# The twin against brute force
# ----------------------------------------------------------------------------------------------

def dense_block_diagonal_attention(q, k, v, cu_seqlens, causal=True):
    """All T tokens at once in float64, with a block-diagonal (and causal) mask."""
    T, Hq, D = q.shape
    seq_id = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), torch.diff(cu_seqlens.long()))
    allowed = seq_id[:, None] == seq_id[None, :]
    if causal:
        allowed &= torch.arange(T)[:, None] >= torch.arange(T)[None, :]
    kv_head = torch.arange(Hq) // (Hq // k.shape[1])
    qd, kd, vd = q.double(), k.double()[:, kv_head], v.double()[:, kv_head]
    scores = torch.einsum("ihd,jhd->hij", qd, kd) / math.sqrt(D)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("hij,jhd->ihd", weights, vd)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "non-causal"])
@pytest.mark.parametrize("lengths", ["odd-1-7-33-100-129", "many-16-short", "empty-seqs-0-17-0-64-0"], ids=str)
def test_twin_matches_dense_block_diagonal_attention(lengths, causal):
    q, k, v, cu = make_inputs(LENGTHS[lengths], 6, 2, 32)
    ref = dense_block_diagonal_attention(q, k, v, cu, causal)
    assert_close(f"twin vs dense ({lengths})", ref, varlen_attention_reference(q, k, v, cu, causal=causal),
                 dtype=torch.float32)


def test_twin_matches_sdpa_per_sequence():
    q, k, v, cu = make_inputs([9, 40], 4, 4, 16)
    out = varlen_attention_reference(q, k, v, cu)
    for a, b in [(0, 9), (9, 49)]:
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True)
        assert_close("twin vs SDPA", sdpa.transpose(0, 1), out[a:b])


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

def _bad(case, device):
    q, k, v, cu = make_inputs([4, 6], 4, 2, 16, torch.float32, device)
    i32 = dict(dtype=torch.int32, device=device)
    kwargs = {}
    if case == "cu-not-starting-at-0":
        cu = torch.tensor([1, 4, 10], **i32)
    elif case == "cu-decreasing":
        cu = torch.tensor([0, 6, 4, 10], **i32)
    elif case == "cu-last-not-T":
        cu = torch.tensor([0, 4, 9], **i32)
    elif case == "hq-not-multiple-of-hkv":
        k, v = k[:, :1].expand(-1, 3, -1), v[:, :1].expand(-1, 3, -1)
    elif case == "q-rank-2":
        q = q[:, 0]
    elif case == "k-rank-4":
        k = k[None]
    elif case == "cu-rank-2":
        cu = cu[None]
    elif case == "cu-float":
        cu = cu.float()
    elif case == "dtype-mismatch":
        k = k.half()
    elif case == "kv-shape-mismatch":
        v = v[..., :8]
    elif case == "unknown-backend":
        kwargs = dict(backend="cuda")
    return (q, k, v, cu), kwargs


BAD_INPUTS = {
    "cu-not-starting-at-0": (ValueError, "start at 0"),
    "cu-decreasing": (ValueError, "non-decreasing"),
    "cu-last-not-T": (ValueError, r"cu_seqlens\[-1\]=9 must equal the number of tokens T=10"),
    "hq-not-multiple-of-hkv": (ValueError, "Hq=4 must be a multiple of key/value heads Hkv=3"),
    "q-rank-2": (ValueError, "q must be a 3-d tensor"),
    "k-rank-4": (ValueError, "k must be a 3-d tensor"),
    "cu-rank-2": (ValueError, "cu_seqlens must be a 1-d tensor"),
    "cu-float": (TypeError, "cu_seqlens must be int32"),
    "dtype-mismatch": (TypeError, "share a dtype"),
    "kv-shape-mismatch": (ValueError, "k and v must have the same shape"),
    "unknown-backend": (ValueError, "backend must be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_inputs_raise_clear_errors(any_device, case):
    args, kwargs = _bad(case, any_device)
    error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        varlen_attention(*args, **kwargs)


def test_max_seqlen_shorter_than_longest_sequence_is_refused():
    q, k, v, cu = make_inputs([4, 6], 2, 2, 16)
    with pytest.raises(ValueError, match="max_seqlen=5 is shorter"):
        varlen_attention(q, k, v, cu, 5)


def test_kernel_refuses_head_dim_that_is_not_a_power_of_two(kernel_device):
    q, k, v, cu = make_inputs([4, 6], 2, 2, 24, device=kernel_device)
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        varlen_attention(q, k, v, cu, backend="triton")


# ----------------------------------------------------------------------------------------------
# The benchmark's pure parts
# ----------------------------------------------------------------------------------------------

def test_attention_flops_counts_causal_pairs():
    lengths, heads, D = [1, 2, 3, 10], 3, 8
    pairs = sum(int(torch.ones(n, n).tril().sum()) for n in lengths)
    assert bench.attention_flops(lengths, heads, D) == 4 * D * heads * pairs
    assert bench.attention_flops(lengths, heads, D, causal=False) == 4 * D * heads * sum(n * n for n in lengths)


@pytest.mark.parametrize("kind,ratio", [("equal", 1.0), ("uniform", 2.0), ("lognormal", 2.0),
                                        ("lognormal", 4.0), ("lognormal", 8.0)],
                         ids=["equal", "uniform", "lognormal-2", "lognormal-4", "lognormal-8"])
@pytest.mark.parametrize("total", [16384, 131072])
def test_length_mix(kind, ratio, total):
    lengths = bench.make_length_mix(kind, total, 1024, ratio, seed=3)
    assert sum(lengths) == total and min(lengths) >= 1
    assert len(lengths) == total // 1024
    measured = max(lengths) * len(lengths) / total
    tolerance = 0.3 if kind == "uniform" else 0.02
    assert abs(measured - ratio) <= tolerance * ratio, f"max/mean {measured:.3f}, wanted about {ratio}"
    assert lengths == bench.make_length_mix(kind, total, 1024, ratio, seed=3)
    if kind != "equal":
        assert lengths != bench.make_length_mix(kind, total, 1024, ratio, seed=4)


def test_length_mix_rejects_impossible_requests():
    with pytest.raises(ValueError, match="unknown length mix"):
        bench.make_length_mix("zipf", 1000, 10)
    with pytest.raises(ValueError, match="max_over_mean"):
        bench.make_length_mix("lognormal", 4096, 1024, 8.0)  # 4 sequences cannot reach max/mean 8


def test_padded_batch_roundtrip_and_gqa_expansion():
    lengths = [3, 0, 5, 1]
    q, k, v, cu = make_inputs(lengths, 6, 2, 8)
    qp, kp, vp = bench.build_padded_batch(q, k, v, cu)
    assert qp.shape == kp.shape == vp.shape == (4, 6, 5, 8) and qp.is_contiguous()
    assert torch.equal(bench.unpad(qp, cu), q)
    assert torch.equal(bench.unpad(kp, cu), k.repeat_interleave(3, dim=1))
    assert torch.equal(kp[2, 4, :, :], k[3:8, 1])  # query head 4 reads KV head 4 // 3 = 1
    assert (qp[0, :, 3:] == 0).all() and (qp[1] == 0).all() and (qp[3, :, 1:] == 0).all()
    assert torch.equal(bench.cu_seqlens_from_lengths(lengths), cu)


def test_padded_causal_sdpa_is_exact_on_real_rows():
    # Right padding + is_causal=True: real queries never see pad keys, which come after them.
    q, k, v, cu = make_inputs([7, 1, 20], 6, 2, 16)
    padded = bench.padded_sdpa(*bench.build_padded_batch(q, k, v, cu))
    assert_close("padded causal SDPA", varlen_attention_reference(q, k, v, cu), bench.unpad(padded, cu))


def test_rank_configs_by_geometric_mean_slowdown():
    rows = [dict(case=c, D=d, config=cfg, ms=ms) for c, d, cfg, ms in [
        ("a", 128, "A", 1.0), ("a", 128, "B", 2.0), ("a", 128, "C", 0.5),
        ("b", 128, "A", 1.1), ("b", 128, "B", 1.0), ("b", 128, "C", None),  # C failed in case b
        ("c", 64, "A", 5.0), ("c", 64, "B", 1.0)]]
    ranking = bench.rank_configs(rows)
    d128 = [r for r in ranking if r["D"] == 128]
    assert [r["config"] for r in d128] == ["A", "B", "C"]
    assert d128[0]["slowdown_geomean"] == pytest.approx(math.sqrt(2 * 1.1))  # 1/0.5 in a, 1.1/1.0 in b
    assert d128[1]["slowdown_geomean"] == pytest.approx(math.sqrt(4.0))
    assert d128[2]["cases_failed"] == 1 and d128[2]["wins"] == 1
    assert [r["config"] for r in ranking if r["D"] == 64] == ["B", "A"]
    assert bench.config_name((64, 32, 4, 3)) == "64x32-w4-s3"


def test_bench_end_to_end_smoke(kernel_device, tmp_path):
    pytest.importorskip("matplotlib")
    device = torch.device(kernel_device)
    backends = ("math",) if device.type == "cpu" else ("flash", "cudnn")
    results = bench.run_benchmark(
        device=device, groups=[("tiny-gqa", 4, 2, 32)], mixes=[("lognormal", 4.0)],
        totals=[160], mean_len=32, configs=[(32, 16, 4, 1)], sdpa_backends=backends,
        warmup=0, reps=1, log=lambda line: None)
    (case,) = results["cases"]
    assert case["case"] == "tiny-gqa/lognormal-4/T160" and case["seqs"] == 5
    assert case["triton_ms"] > 0 and case["speedup_vs_best_baseline"] > 0
    assert case["baselines_agree_with_kernel"], case["errors"]
    assert case["useful_tflop"] == bench.attention_flops(
        bench.make_length_mix("lognormal", 160, 32, 4.0), 4, 32) / 1e12
    assert {r["config"] for r in results["config_ranking"]} == {"64x64-w4-s3", "32x16-w4-s1"}
    (best,) = results["best_config"]
    assert best["D"] == 32 and best["config"] in {"64x64-w4-s3", "32x16-w4-s1"} and "block_m" in best
    assert [t["case"] for t in results["target"]] == [case["case"]]
    # Every table is flat, so the book's generic JSON renderer shows plain columns.
    for table in results.values():
        assert all(not isinstance(v, (dict, list)) for row in table for v in row.values())
    out = tmp_path / "bench"
    bench.write_json_atomic(out / "varlen_attention.json", dict(op=bench.OP, **results))
    assert json.loads((out / "varlen_attention.json").read_text())["op"] == "varlen_attention"
    bench.plot(results["cases"], out / "varlen_attention.png")
    assert (out / "varlen_attention.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["varlen_attention.json", "varlen_attention.png"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_bench_without_cuda_exits_2_and_writes_nothing(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path / "bench")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_bench_provenance_names_versions_and_commit():
    info = bench.provenance(torch.device("cpu"))
    assert {"git_commit", "git_dirty", "versions", "hardware", "created_utc"} <= set(info)
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["triton"]
