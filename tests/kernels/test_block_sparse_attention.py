"""Block-sparse attention: the Triton kernel against its PyTorch twin, the twin against dense
attention (SDPA), the compressed block index, and the pure parts of its benchmark
(bench_block_sparse_attention).

Kernel tests run wherever conftest.KERNEL_DEVICES says a kernel can: on CPU under
TRITON_INTERPRET=1, on CUDA when a GPU is present. torch.empty* is NaN-poisoned by conftest, so
an output element the kernel never writes fails the comparison. Tolerances: conftest.OP_TOLERANCES.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenbook.kernels.block_sparse_attention import block_sparse_attention, build_block_index
from tokenbook.kernels.block_sparse_attention_reference import (
    block_sparse_attention_reference, token_mask_from_layout)
from tokenbook.kernels.sparse_layouts import lambda_layout

OP = "block_sparse_attention"
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def make_qkv(B, Hq, Hkv, Tq, Tk, D, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Tq, D, generator=gen)
    k, v = (torch.randn(B, Hkv, Tk, D, generator=gen) for _ in range(2))
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def n_blocks(T, bs):
    return -(-T // bs)


def make_layout(kind, B, Hq, Tq, Tk, bs, device="cpu", seed=0):
    nq, nk = n_blocks(Tq, bs), n_blocks(Tk, bs)
    if kind == "full":
        return torch.ones(1, 1, nq, nk, dtype=torch.bool, device=device)
    if kind == "lambda":
        return lambda_layout(nq, nk, sink_blocks=1, window_blocks=2, device=device)
    if kind == "random-with-empty-rows":
        gen = torch.Generator().manual_seed(seed)
        layout = torch.rand(B, Hq, nq, nk, generator=gen) < 0.5
        layout[0, 0, 0] = False          # the first row of one head: empty
        layout[-1, -1, -1] = False       # the last row of another: empty
        return layout.to(device)
    raise ValueError(kind)


# name: (B, Hq, Hkv, Tq, Tk, D, block_size)
SHAPES = {
    "prefill-T77-odd-bs32-d64": (1, 2, 2, 77, 77, 64, 32),
    "prefill-T130-gqa3-bs64-d128": (1, 3, 1, 130, 130, 128, 64),
    "chunk-Tq40-Tk135-unaligned-b2-gqa2": (2, 2, 1, 40, 135, 64, 32),
    "chunk-Tq64-Tk192-aligned-d128": (1, 2, 2, 64, 192, 128, 64),
    "decode-Tq1-Tk200-b2-gqa3-d128": (2, 3, 1, 1, 200, 128, 64),
    "short-Tq5-Tk70-bs16": (1, 2, 1, 5, 70, 64, 16),
}
LAYOUTS = ["full", "lambda", "random-with-empty-rows"]


# ----------------------------------------------------------------------------------------------
# Kernel vs twin
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("kind", LAYOUTS, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
def test_kernel_matches_twin(kernel_device, assert_close_op, shape, kind, dtype):
    B, Hq, Hkv, Tq, Tk, D, bs = SHAPES[shape]
    q, k, v = make_qkv(B, Hq, Hkv, Tq, Tk, D, dtype, kernel_device)
    layout = make_layout(kind, B, Hq, Tq, Tk, bs, kernel_device)
    out = block_sparse_attention(q, k, v, layout, block_size=bs, backend="triton")
    ref = block_sparse_attention_reference(q, k, v, layout, block_size=bs)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_op(OP, f"{shape}/{kind}/{DTYPE_IDS[dtype]}", ref, out)


VARIANTS = {
    # name: (shape, layout kind, dtype, keyword arguments)
    "non-causal-random": ("chunk-Tq40-Tk135-unaligned-b2-gqa2", "random-with-empty-rows", torch.float32,
                          dict(causal=False)),
    "non-causal-bf16-Tq-gt-Tk": ((1, 2, 1, 70, 40, 32, 32), "full", torch.bfloat16, dict(causal=False)),
    "fp16-lambda": ("prefill-T77-odd-bs32-d64", "lambda", torch.float16, {}),
    "block_n-32-inside-bs64": ("prefill-T130-gqa3-bs64-d128", "random-with-empty-rows", torch.float32,
                               dict(block_n=32)),
    "block_m-16-block_n-16-bs64": ("chunk-Tq64-Tk192-aligned-d128", "lambda", torch.float32,
                                   dict(block_m=16, block_n=16)),
    "block_m-32-unaligned-chunk": ("chunk-Tq40-Tk135-unaligned-b2-gqa2", "random-with-empty-rows",
                                   torch.bfloat16, dict(block_m=32)),
    "decode-block_m-16-bs128": ((1, 2, 2, 1, 300, 64, 128), "full", torch.float32, {}),
    "scale-0.3": ("prefill-T77-odd-bs32-d64", "random-with-empty-rows", torch.float32, dict(scale=0.3)),
    "d16-bs16": ((1, 2, 2, 33, 33, 16, 16), "lambda", torch.float32, {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
def test_kernel_variants(kernel_device, assert_close_op, variant):
    shape, kind, dtype, kwargs = VARIANTS[variant]
    B, Hq, Hkv, Tq, Tk, D, bs = SHAPES[shape] if isinstance(shape, str) else shape
    q, k, v = make_qkv(B, Hq, Hkv, Tq, Tk, D, dtype, kernel_device)
    layout = make_layout(kind, B, Hq, Tq, Tk, bs, kernel_device)
    out = block_sparse_attention(q, k, v, layout, block_size=bs, backend="triton", **kwargs)
    twin_kwargs = {key: val for key, val in kwargs.items() if key in ("causal", "scale")}
    ref = block_sparse_attention_reference(q, k, v, layout, block_size=bs, **twin_kwargs)
    assert_close_op(OP, variant, ref, out)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_layout_rows_output_zeros(kernel_device, backend):
    q, k, v = make_qkv(2, 3, 1, 90, 90, 32, torch.float32, kernel_device)
    layout = torch.ones(2, 3, 3, 3, dtype=torch.bool, device=kernel_device)
    layout[0, 1, 1] = False                     # one row of one head
    layout[1, :, 2] = False                     # the last row of every head of one batch element
    out = block_sparse_attention(q, k, v, layout, block_size=32, backend=backend)
    assert torch.isfinite(out).all()
    assert (out[0, 1, 32:64] == 0).all() and (out[1, :, 64:] == 0).all()
    assert (out[0, 1, :32].abs().sum(-1) > 0).all() and (out[0, 0, 32:64].abs().sum(-1) > 0).all()
    # An all-empty layout: every output is zero.
    none = torch.zeros(1, 1, 3, 3, dtype=torch.bool, device=kernel_device)
    assert (block_sparse_attention(q, k, v, none, block_size=32, backend=backend) == 0).all()


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_queries_that_only_see_future_keys_output_zeros(kernel_device, backend):
    # Tq=20, Tk=40, bs=16: queries sit at 20..39; query row 0 holds positions 20..35. With only
    # key block 2 (keys 32..47) active, positions 20..31 see nothing and must be zero.
    q, k, v = make_qkv(1, 1, 1, 20, 40, 16, torch.float32, kernel_device)
    layout = torch.zeros(1, 1, 2, 3, dtype=torch.bool, device=kernel_device)
    layout[..., 0, 2] = True
    out = block_sparse_attention(q, k, v, layout, block_size=16, backend=backend)
    assert (out[0, 0, :12] == 0).all() and (out[0, 0, 12:16].abs().sum(-1) > 0).all()
    assert (out[0, 0, 16:] == 0).all()  # row 1 is empty


def test_full_layout_equals_dense_causal_sdpa(kernel_device, assert_close_op):
    q, k, v = make_qkv(1, 4, 2, 100, 100, 64, torch.float32, kernel_device)
    full = make_layout("full", 1, 4, 100, 100, 32, kernel_device)
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          is_causal=True)
    assert_close_op(OP, "kernel vs SDPA", sdpa, block_sparse_attention(q, k, v, full, block_size=32,
                                                                          backend="triton"))
    assert_close_op(OP, "twin vs SDPA", sdpa, block_sparse_attention_reference(q, k, v, full, block_size=32))


def test_twin_matches_sdpa_with_the_token_mask_tq_lt_tk(assert_close_op):
    q, k, v = make_qkv(2, 3, 3, 37, 101, 32)
    layout = make_layout("random-with-empty-rows", 2, 3, 37, 101, 16)
    mask = token_mask_from_layout(layout, 37, 101, 16)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    has_key = mask.any(-1)
    twin = block_sparse_attention_reference(q, k, v, layout, block_size=16)
    assert_close_op(OP, "twin vs SDPA (rows with keys)", sdpa[has_key], twin[has_key])
    assert (twin[~has_key] == 0).all() and (~has_key).any()


def test_layout_blocks_in_the_future_are_ignored(kernel_device):
    q, k, v = make_qkv(1, 2, 2, 70, 70, 32, torch.float32, kernel_device)
    lower = make_layout("lambda", 1, 2, 70, 70, 16, kernel_device)
    upper = lower | torch.ones_like(lower).triu(1)
    a = block_sparse_attention(q, k, v, lower, block_size=16, backend="triton")
    b = block_sparse_attention(q, k, v, upper, block_size=16, backend="triton")
    assert torch.equal(a, b)


def test_broadcast_layout_equals_expanded(kernel_device):
    q, k, v = make_qkv(2, 3, 1, 50, 50, 32, torch.float32, kernel_device)
    per_head = make_layout("random-with-empty-rows", 1, 3, 50, 50, 16, kernel_device)  # [1, 3, ...]
    a = block_sparse_attention(q, k, v, per_head, block_size=16, backend="triton")
    b = block_sparse_attention(q, k, v, per_head.expand(2, -1, -1, -1).contiguous(), block_size=16,
                               backend="triton")
    assert torch.equal(a, b)


def test_strided_inputs(kernel_device, assert_close_op):
    # [B, T, H, D] projections viewed as [B, H, T, D], as models produce them.
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2)
               for t in make_qkv(1, 2, 1, 45, 45, 32, torch.float32, kernel_device))
    assert not q.is_contiguous()
    layout = make_layout("lambda", 1, 2, 45, 45, 16, kernel_device)
    out = block_sparse_attention(q, k, v, layout, block_size=16, backend="triton")
    assert_close_op(OP, "strided", block_sparse_attention_reference(q, k, v, layout, block_size=16), out)


def test_output_is_completely_written(kernel_device):
    assert torch.empty(4).isnan().all(), "conftest should NaN-poison torch.empty"
    q, k, v = make_qkv(1, 2, 1, 33, 65, 32, torch.bfloat16, kernel_device)
    layout = make_layout("random-with-empty-rows", 1, 2, 33, 65, 16, kernel_device)
    out = block_sparse_attention(q, k, v, layout, block_size=16, backend="triton")
    assert torch.isfinite(out.float()).all(), "the kernel left NaN-poisoned elements unwritten"


def test_auto_backend_on_cpu_is_the_twin():
    q, k, v = make_qkv(1, 2, 1, 40, 40, 16)
    layout = make_layout("lambda", 1, 2, 40, 40, 16)
    assert torch.equal(block_sparse_attention(q, k, v, layout, block_size=16),
                       block_sparse_attention_reference(q, k, v, layout, block_size=16))


# ----------------------------------------------------------------------------------------------
# The compressed index
# ----------------------------------------------------------------------------------------------

def test_block_index_lists_active_columns_ascending_and_unmasked_ones_first():
    layout = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)[None, None]
    # Tq = Tk = 60, bs = 16: rows 0..2 hold positions 0..15, 16..31, 32..47; key block 3 is ragged.
    counts, n_full, cols = build_block_index(layout, 60, 60, 16, causal=True)
    # Causal pruning: row 0 keeps block 0 only, row 1 blocks 1, row 2 blocks 0, 1, 2.
    assert counts[0, 0].tolist() == [1, 1, 3]
    assert n_full[0, 0].tolist() == [0, 0, 2]   # the diagonal block is always masked
    assert cols[0, 0, 0, :1].tolist() == [0] and cols[0, 0, 1, :1].tolist() == [1]
    assert cols[0, 0, 2, :3].tolist() == [0, 1, 2]
    counts, n_full, cols = build_block_index(layout, 60, 60, 16, causal=False)
    assert counts[0, 0].tolist() == [3, 3, 3] and n_full[0, 0].tolist() == [2, 2, 3]
    assert cols[0, 0, 0, :3].tolist() == [0, 2, 3]
    assert counts.dtype == n_full.dtype == cols.dtype == torch.int32


def test_block_index_decode_row_sees_every_block():
    counts, n_full, cols = build_block_index(torch.ones(1, 1, 1, 4, dtype=torch.bool), 1, 200, 64)
    assert counts.item() == 4 and n_full.item() == 3  # the last block (192..199) is ragged


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

BAD = {
    "layout-wrong-blocks": (ValueError, "layout must be"),
    "layout-not-bool": (ValueError, "4-d bool"),
    "layout-wrong-heads": (ValueError, "layout must be"),
    "causal-tq-gt-tk": (ValueError, "Tq <= Tk"),
    "block-size-48": (ValueError, "power of two"),
    "hq-not-multiple": (ValueError, "multiple"),
    "q-rank-3": (ValueError, "4-d"),
    "dtype-mismatch": (TypeError, "share a dtype"),
    "unknown-backend": (ValueError, "backend must be"),
    "block_m-above-block-size": (ValueError, "block_m must be"),
}


@pytest.mark.parametrize("case", list(BAD), ids=str)
def test_bad_inputs_raise(case):
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16)
    layout = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    kwargs = dict(block_size=16)
    if case == "layout-wrong-blocks":
        layout = layout[..., :2]
    elif case == "layout-not-bool":
        layout = layout.int()
    elif case == "layout-wrong-heads":
        layout = layout.expand(1, 2, 3, 3)
    elif case == "causal-tq-gt-tk":
        k, v = k[:, :, :20], v[:, :, :20]
        layout = torch.ones(1, 1, 3, 2, dtype=torch.bool)
    elif case == "block-size-48":
        kwargs = dict(block_size=48)
    elif case == "hq-not-multiple":
        k, v = k[:, :1].expand(-1, 3, -1, -1), v[:, :1].expand(-1, 3, -1, -1)
    elif case == "q-rank-3":
        q = q[0]
    elif case == "dtype-mismatch":
        k = k.half()
    elif case == "unknown-backend":
        kwargs["backend"] = "cuda"
    elif case == "block_m-above-block-size":
        kwargs.update(backend="triton", block_m=32)
    error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        block_sparse_attention(q, k, v, layout, **kwargs)


def test_precomputed_block_index_is_reused(kernel_device):
    q, k, v = make_qkv(1, 2, 1, 50, 50, 32, torch.float32, kernel_device)
    layout = make_layout("random-with-empty-rows", 1, 2, 50, 50, 16, kernel_device)
    index = build_block_index(layout, 50, 50, 16)
    a = block_sparse_attention(q, k, v, layout, block_size=16, backend="triton", block_index=index)
    assert torch.equal(a, block_sparse_attention(q, k, v, layout, block_size=16, backend="triton"))


# ----------------------------------------------------------------------------------------------
# The benchmark's pure parts (bench_block_sparse_attention) and the entry script (bench_all)
# ----------------------------------------------------------------------------------------------

from tokenbook.kernels import bench_all  # noqa: E402
from tokenbook.kernels import bench_block_sparse_attention as bench  # noqa: E402


@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_random_causal_layout_density(density):
    layout = bench.random_causal_layout(40, 3, density, seed=1)
    assert layout.shape == (1, 3, 40, 40) and not layout.triu(1).any()
    assert layout.diagonal(dim1=-2, dim2=-1).all()
    per_row = layout.sum(-1)[0]                                  # [3, 40]
    want = torch.ceil(density * torch.arange(1, 41).double() - 1e-9).clamp(min=1)
    assert torch.equal(per_row, want.long().expand(3, -1))
    assert not torch.equal(layout[0, 0], layout[0, 1]) or density == 1.0   # heads differ


@pytest.mark.parametrize("Tq,Tk,bs,causal", [(70, 70, 16, True), (20, 101, 16, True), (1, 90, 32, True),
                                             (33, 50, 16, False)],
                         ids=["prefill", "chunk", "decode", "non-causal"])
def test_layout_pairs_counts_the_token_mask(Tq, Tk, bs, causal):
    layout = make_layout("random-with-empty-rows", 2, 3, Tq, Tk, bs)
    mask = token_mask_from_layout(layout, Tq, Tk, bs, causal)
    assert bench.layout_pairs(layout, Tq, Tk, bs, causal) == int(mask.sum())


def test_targets_are_reported_not_asserted():
    cases = [
        dict(case="a", mode="prefill", seq_len=16384, density_target=1.0, density=1.0, kernel_ms=1.0,
             sdpa_flash_ms=1.2, speedup_vs_own_dense=1.0),
        dict(case="b", mode="prefill", seq_len=16384, density_target=0.1, density=0.1, kernel_ms=0.2,
             sdpa_flash_ms=1.2, speedup_vs_own_dense=5.0),
        dict(case="c", mode="prefill", seq_len=4096, density_target=0.1, density=0.1, kernel_ms=0.2,
             speedup_vs_own_dense=2.0),
        dict(case="d", mode="decode", seq_len=16384, density_target=1.0, density=1.0, kernel_ms=0.1),
    ]
    rows = bench.targets(cases)
    assert [(r["case"], r["met"]) for r in rows] == [("a", True), ("b", False)]
    assert rows[1]["threshold"] == pytest.approx(7.0)


def test_bench_end_to_end_smoke_on_cpu(tmp_path):
    pytest.importorskip("matplotlib")
    results = bench.run_benchmark(device=torch.device("cpu"), seq_lens=[96], densities=[0.5, 1.0],
                                  decode_lens=[100], heads=2, head_dim=32, block_size=32,
                                  dense_backends=("math",), mask_backends=("math",), warmup=0, reps=1,
                                  log=lambda line: None)
    cases = results["cases"]
    assert [c["case"] for c in cases] == ["prefill/N96/d0.5", "prefill/N96/d1", "decode/N100/d0.5", "decode/N100/d1"]
    assert all(c["errors"] == "" for c in cases), [c["errors"] for c in cases]
    assert cases[1]["density"] == 1.0 and 0.4 < cases[0]["density"] < 0.9
    assert cases[0]["sdpa_mask_math_ms"] > 0 and cases[0]["kernel_ms"] > 0
    for table in results.values():
        assert all(not isinstance(v, (dict, list)) for row in table for v in row.values())
    bench.plot(cases, tmp_path / "block_sparse_attention.png")
    assert (tmp_path / "block_sparse_attention.png").stat().st_size > 1000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_bench_and_bench_all_without_cuda_exit_2(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path / "bench")]) == 2
    assert bench_all.main(["--out", str(tmp_path / "bench")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_bench_all_lists_importable_benches_and_summarizes():
    import importlib
    for name in bench_all.BENCHES:
        assert callable(importlib.import_module(f"tokenbook.kernels.{name}").main)
    assert "bench_block_sparse_attention" in bench_all.BENCHES
    assert bench_all.bench_argv("out", True) == ["--out", "out", "--quick"]
    assert bench_all.summarize({"a": (0, 1.0), "b": (0, 2.0)})[0] == 0
    assert bench_all.summarize({"a": (2, 0.0)})[0] == 2
    status, lines = bench_all.summarize({"a": (0, 1.0), "b": (1, 2.0)})
    assert status == 1 and "tests failed" in lines[1]
