"""GPU benchmark of block-sparse attention against the best PyTorch baselines in the same run.

Run (needs CUDA; exits with status 2 and a message otherwise)::

    python -m tokenbook.kernels.bench_block_sparse_attention --out results/bench [--quick]

It first runs the op's tests (``tests/kernels/test_block_sparse_attention.py`` and
``test_sparse_layouts.py``) on the GPU in a subprocess with ``TRITON_INTERPRET`` unset, and
reports nothing if they fail. Then, in bf16 with B=1, H=32, D=128, block size 64, for sequence
lengths 1k..64k (prefill, ``Tq = Tk = N``) and densities 5%..100% it times, with CUDA events
(median of repeats after warm-up):

- the Triton kernel on a random causal layout of that density (every row keeps its diagonal
  block and ``ceil(d * valid blocks)`` blocks in all, chosen at random per head), with the
  compressed index built beforehand (its build time is reported apart, ``index_ms``);
- the same kernel with the full layout: its own dense mode, the denominator of the
  ``speedup_vs_own_dense`` target;
- SDPA, ``is_causal=True``, dense, flash and cuDNN backends (the best dense baseline);
- SDPA with the layout's token-level boolean mask (dense-with-mask; efficient and cuDNN
  backends, whichever runs) while that mask fits in memory (``H * N^2`` bytes <= 16 GiB, i.e.
  N <= 16k); its output is checked against the kernel's on rows that see a key;
- decode (``Tq = 1`` against an ``N``-token cache) at 16k and 64k: the kernel at each density
  and dense SDPA (flash, cuDNN).

Useful TFLOP/s count only the query-key pairs the layout and the causal mask keep
(``4 * D * H * pairs``, :func:`layout_pairs`), the same numerator for the kernel and the masked
baseline; dense SDPA is credited with the dense causal pairs. Targets (reported, never asserted):
block-sparse at 100% density at least as fast as SDPA-flash; at density d, speedup over its own
dense mode >= 0.7 / d for N >= 16k. Writes ``<out>/block_sparse_attention.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench_varlen_attention import _free, _sdpa_backend, _short, provenance, time_ms, write_json_atomic

OP = "block_sparse_attention"
REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = [Path("tests") / "kernels" / "test_block_sparse_attention.py",
              Path("tests") / "kernels" / "test_sparse_layouts.py"]
SEQ_LENS = [1024, 4096, 16384, 65536]
DENSITIES = [0.05, 0.1, 0.25, 0.5, 1.0]
DECODE_LENS = [16384, 65536]
HEADS, HEAD_DIM, BLOCK_SIZE = 32, 128, 64
MASK_BYTES_LIMIT = 16 * 2**30
BF16_MAX_ABS_DIFF = 1e-1
FLOP_FORMULA = "4 * D * H * pairs, pairs = query-key pairs kept by the layout and the causal mask"


# ----------------------------------------------------------------------------------------------
# Pure parts (unit-tested on CPU in tests/kernels/test_block_sparse_attention.py)
# ----------------------------------------------------------------------------------------------

def random_causal_layout(n_blocks: int, heads: int, density: float, seed: int = 0, device="cpu") -> torch.Tensor:
    """``[1, heads, n, n]`` causal layout keeping ``ceil(density * (r + 1))`` blocks of row ``r``
    (at least one): the diagonal block plus randomly chosen earlier ones, per head."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scores = torch.rand(heads, n_blocks, n_blocks, generator=gen).to(device)
    rows = torch.arange(n_blocks, device=device)
    valid = rows[None, :] <= rows[:, None]
    scores = scores.masked_fill(~valid, -1.0)
    scores[:, rows, rows] = 2.0                      # the diagonal ranks first
    rank = scores.argsort(-1, descending=True).argsort(-1)
    keep = torch.ceil(density * (rows + 1).double() - 1e-9).clamp(min=1).to(rank.dtype)
    return ((rank < keep[:, None]) & valid)[None]


def layout_pairs(layout: torch.Tensor, q_len: int, k_len: int, block_size: int, causal: bool = True) -> int:
    """Query-key pairs a layout keeps under the (bottom-right aligned) causal mask, summed over
    batch and heads, without building the token mask."""
    nq, nk = layout.shape[-2:]
    offset = k_len - q_len
    r = torch.arange(nq, dtype=torch.float64)
    c = torch.arange(nk, dtype=torch.float64)
    q_lo, q_hi = r * block_size, torch.clamp((r + 1) * block_size, max=q_len)      # query index range
    k_lo, k_hi = c * block_size, torch.clamp((c + 1) * block_size, max=k_len)      # key range
    n_q = (q_hi - q_lo)[:, None]
    if not causal:
        pairs = n_q * (k_hi - k_lo)[None, :]
    else:
        # Per query i (absolute position a = offset + i), keys in [k_lo, min(k_hi, a + 1)).
        # Sum over i of clamp(a + 1 - k_lo, 0, k_hi - k_lo): a piecewise-linear sum, done exactly
        # by summing over the block's queries (at most block_size of them) with broadcasting.
        i = q_lo[:, None] + torch.arange(block_size, dtype=torch.float64)[None, :]   # [nq, bs]
        real = i < q_hi[:, None]
        a = offset + i
        seen = torch.clamp(a[:, :, None] + 1 - k_lo[None, None, :], min=0)
        seen = torch.minimum(seen, (k_hi - k_lo)[None, None, :]) * real[:, :, None]
        pairs = seen.sum(1)                                                           # [nq, nk]
    kept = layout.to(torch.float64).cpu() * pairs
    return int(kept.sum().item())


def targets(cases: list[dict]) -> list[dict]:
    """The project's two targets, evaluated per case (prefill only)."""
    rows = []
    for c in cases:
        if c["mode"] != "prefill" or c.get("kernel_ms") is None:
            continue
        if c["density_target"] == 1.0 and c.get("sdpa_flash_ms"):
            rows.append(dict(case=c["case"], target="100% density >= SDPA-flash speed",
                             value=c["sdpa_flash_ms"] / c["kernel_ms"], threshold=1.0,
                             met=c["sdpa_flash_ms"] / c["kernel_ms"] >= 1.0))
        if c["seq_len"] >= 16384 and c["density_target"] < 1.0 and c.get("speedup_vs_own_dense"):
            threshold = 0.7 / c["density"]
            rows.append(dict(case=c["case"], target="speedup over own dense >= 0.7 / density (N >= 16k)",
                             value=c["speedup_vs_own_dense"], threshold=threshold,
                             met=c["speedup_vs_own_dense"] >= threshold))
    return rows


# ----------------------------------------------------------------------------------------------
# Measurements (GPU)
# ----------------------------------------------------------------------------------------------

def _sdpa(q, k, v, backend, **kwargs):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(_sdpa_backend(backend)):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def run_prefill(N, densities, *, device, heads=HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE,
                dense_backends=("flash", "cudnn"), mask_backends=("efficient", "cudnn"),
                warmup=5, reps=20, seed=0, log=print) -> list[dict]:
    from .block_sparse_attention import block_sparse_attention, build_block_index
    from .block_sparse_attention_reference import token_mask_from_layout

    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(1, heads, N, head_dim, generator=gen, device=device, dtype=torch.bfloat16)
               for _ in range(3))
    n = -(-N // block_size)
    dense_pairs = heads * N * (N + 1) // 2
    flops = lambda pairs, ms: 4.0 * head_dim * pairs / (ms * 1e-3) / 1e12  # noqa: E731

    # Dense baselines once per N.
    dense_ms, dense_out, errors = {}, None, []
    for backend in dense_backends:
        try:
            out = _sdpa(q, k, v, backend, is_causal=True)
            dense_out = out if dense_out is None else dense_out
            dense_ms[backend] = time_ms(lambda: _sdpa(q, k, v, backend, is_causal=True), device, warmup, reps)
        except Exception as exc:
            errors.append(f"sdpa_{backend}: {_short(exc)}")
        _free(device)

    full = torch.ones(1, 1, n, n, dtype=torch.bool, device=device)
    full_index = build_block_index(full, N, N, block_size)
    own_dense = lambda: block_sparse_attention(q, k, v, full, block_size=block_size, block_index=full_index)  # noqa: E731
    own_dense_out = own_dense()
    if dense_out is not None:
        diff = (own_dense_out.float() - dense_out.float()).abs().max().item()
        if not diff <= BF16_MAX_ABS_DIFF:
            errors.append(f"full layout differs from dense SDPA by {diff:.3g}")
    del own_dense_out
    own_dense_ms = time_ms(own_dense, device, warmup, reps)

    rows = []
    for d in densities:
        t0 = time.perf_counter()
        layout = full if d == 1.0 else random_causal_layout(n, heads, d, seed, device)
        index_ms = time_ms(lambda: build_block_index(layout, N, N, block_size), device, 1, 3)
        index = build_block_index(layout, N, N, block_size)
        pairs = layout_pairs(layout, N, N, block_size) * (heads if layout.shape[1] == 1 else 1)
        row = dict(case=f"prefill/N{N}/d{d:g}", mode="prefill", seq_len=N, q_len=N, heads=heads, head_dim=head_dim,
                   block_size=block_size, density_target=d, density=pairs / dense_pairs, index_ms=index_ms)
        case_errors = list(errors)
        run = lambda: block_sparse_attention(q, k, v, layout, block_size=block_size, block_index=index)  # noqa: E731
        kernel_out = run()
        row["kernel_ms"] = time_ms(run, device, warmup, reps)
        row["kernel_tflops"] = flops(pairs, row["kernel_ms"])
        row["own_dense_ms"] = own_dense_ms
        row["speedup_vs_own_dense"] = own_dense_ms / row["kernel_ms"]
        for backend in dense_backends:
            row[f"sdpa_{backend}_ms"] = dense_ms.get(backend)
        # Dense-with-mask baseline while the token mask fits.
        best_mask = None
        if heads * N * N <= MASK_BYTES_LIMIT:
            mask = token_mask_from_layout(layout, N, N, block_size).expand(1, heads, N, N)
            has_key = mask.any(-1)
            for backend in mask_backends:
                key = f"sdpa_mask_{backend}_ms"
                row[key] = None
                try:
                    out = _sdpa(q, k, v, backend, attn_mask=mask)
                    diff = (out.float() - kernel_out.float())[has_key].abs().max().item()
                    if not diff <= BF16_MAX_ABS_DIFF:
                        case_errors.append(f"masked sdpa_{backend} differs from the kernel by {diff:.3g}")
                    del out
                    row[key] = time_ms(lambda: _sdpa(q, k, v, backend, attn_mask=mask), device, warmup, reps)
                    if best_mask is None or row[key] < row[best_mask]:
                        best_mask = key
                except Exception as exc:
                    case_errors.append(f"masked sdpa_{backend}: {_short(exc)}")
                _free(device)
            del mask, has_key
        baselines = {k_: v_ for k_, v_ in row.items() if k_.startswith("sdpa_") and k_.endswith("_ms") and v_}
        if baselines:
            best = min(baselines, key=baselines.get)
            row.update(best_baseline=best[:-3], best_baseline_ms=baselines[best],
                       speedup_vs_best_baseline=baselines[best] / row["kernel_ms"])
        if dense_ms:
            best_dense = min(dense_ms, key=dense_ms.get)
            row.update(best_dense=best_dense, speedup_vs_best_dense=dense_ms[best_dense] / row["kernel_ms"],
                       best_dense_tflops=flops(dense_pairs, dense_ms[best_dense]))
        row["errors"] = "; ".join(case_errors)
        rows.append(row)
        del kernel_out, index
        _free(device)
        log(_line(row, time.perf_counter() - t0))
    return rows


def run_decode(N, densities, *, device, heads=HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE,
               dense_backends=("flash", "cudnn"), warmup=5, reps=50, seed=0, log=print) -> list[dict]:
    from .block_sparse_attention import block_sparse_attention, build_block_index

    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, heads, 1, head_dim, generator=gen, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(1, heads, N, head_dim, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2))
    n = -(-N // block_size)
    dense_ms = {}
    errors = []
    for backend in dense_backends:
        try:
            _sdpa(q, k, v, backend)
            dense_ms[backend] = time_ms(lambda: _sdpa(q, k, v, backend), device, warmup, reps)
        except Exception as exc:
            errors.append(f"sdpa_{backend}: {_short(exc)}")
    rows = []
    for d in densities:
        t0 = time.perf_counter()
        gen_cpu = torch.Generator().manual_seed(seed)
        keep = torch.rand(heads, n, generator=gen_cpu) < d
        keep[:, -1] = True                                   # the block holding the query
        layout = keep[None, :, None, :].to(device)
        index = build_block_index(layout, 1, N, block_size)
        row = dict(case=f"decode/N{N}/d{d:g}", mode="decode", seq_len=N, q_len=1, heads=heads, head_dim=head_dim,
                   block_size=block_size, density_target=d, density=float(keep.float().mean()))
        run = lambda: block_sparse_attention(q, k, v, layout, block_size=block_size, block_index=index)  # noqa: E731
        run()
        row["kernel_ms"] = time_ms(run, device, warmup, reps)
        for backend in dense_backends:
            row[f"sdpa_{backend}_ms"] = dense_ms.get(backend)
        if dense_ms:
            best = min(dense_ms, key=dense_ms.get)
            row.update(best_baseline=f"sdpa_{best}", best_baseline_ms=dense_ms[best],
                       speedup_vs_best_baseline=dense_ms[best] / row["kernel_ms"])
        row["errors"] = "; ".join(errors)
        rows.append(row)
        log(_line(row, time.perf_counter() - t0))
    return rows


def _line(row, seconds) -> str:
    parts = [f"{row['case']:<24} density {row['density']:.3f}", f"kernel {row['kernel_ms']:8.3f} ms"]
    parts += [f"{k[:-3]} {v:8.3f}" for k, v in row.items() if k.startswith("sdpa_") and k.endswith("_ms") and v]
    if row.get("speedup_vs_own_dense"):
        parts.append(f"x{row['speedup_vs_own_dense']:.2f} vs own dense")
    if row.get("speedup_vs_best_baseline"):
        parts.append(f"x{row['speedup_vs_best_baseline']:.2f} vs {row['best_baseline']}")
    parts.append(f"{seconds:.1f} s")
    return " | ".join(parts)


def run_benchmark(*, device, seq_lens=SEQ_LENS, densities=DENSITIES, decode_lens=DECODE_LENS,
                  heads=HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE, dense_backends=("flash", "cudnn"),
                  mask_backends=("efficient", "cudnn"), warmup=5, reps=20, log=print) -> dict:
    cases = []
    for N in seq_lens:
        cases += run_prefill(N, densities, device=device, heads=heads, head_dim=head_dim, block_size=block_size,
                             dense_backends=dense_backends, mask_backends=mask_backends, warmup=warmup,
                             reps=reps, log=log)
    for N in decode_lens:
        cases += run_decode(N, densities, device=device, heads=heads, head_dim=head_dim, block_size=block_size,
                            dense_backends=dense_backends, warmup=warmup, reps=max(reps, 20), log=log)
    return dict(cases=cases, target=targets(cases))


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def plot(cases: list[dict], path: Path) -> None:
    """Milliseconds vs density per prefill length: the kernel, its dense mode, SDPA baselines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefill = [c for c in cases if c["mode"] == "prefill"]
    lens = sorted({c["seq_len"] for c in prefill})
    fig, axes = plt.subplots(1, max(1, len(lens)), figsize=(4.2 * max(1, len(lens)), 3.6), squeeze=False)
    for ax, N in zip(axes[0], lens):
        rows = sorted((c for c in prefill if c["seq_len"] == N), key=lambda c: c["density"])
        xs = [c["density"] for c in rows]
        ax.plot(xs, [c["kernel_ms"] for c in rows], "o-", label="block-sparse (Triton)")
        ax.plot(xs, [c["own_dense_ms"] * c["density"] for c in rows], ":",
                color="gray", label="own dense x density (ideal)")
        for key, style in (("sdpa_flash_ms", "--"), ("sdpa_cudnn_ms", "-.")):
            if rows and rows[0].get(key):
                ax.axhline(rows[0][key], linestyle=style, color="k" if "flash" in key else "tab:red",
                           label=f"SDPA {key.split('_')[1]} dense")
        for key in ("sdpa_mask_efficient_ms", "sdpa_mask_cudnn_ms"):
            pts = [(c["density"], c[key]) for c in rows if c.get(key)]
            if pts:
                ax.plot(*zip(*pts), "x", label=f"SDPA {key.split('_')[2]} + mask")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density (fraction of causal blocks)")
        ax.set_ylabel("ms")
        ax.set_title(f"N = {N}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def run_tests(test_files=TEST_FILES, timeout_s: int = 1800) -> tuple[bool, str]:
    """Run the op's tests on the GPU in a subprocess; return (passed, summary or failure output)."""
    missing = [str(f) for f in test_files if not (REPO_ROOT / f).exists()]
    if missing:
        return False, f"test files not found: {missing}"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", *map(str, test_files), "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"the tests did not finish within {timeout_s} s"
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        return False, output[-4000:]
    lines = [line for line in output.splitlines() if " passed" in line]
    return True, lines[-1] if lines else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="N = 16k only, densities 10% and 100%, no decode")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_block_sparse_attention: needs a CUDA GPU and none is visible; nothing was measured.",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_block_sparse_attention: TRITON_INTERPRET is set; unset it.", file=sys.stderr)
        return 2
    print(f"running {', '.join(map(str, TEST_FILES))} on the GPU first", flush=True)
    passed, summary = run_tests()
    if not passed:
        print(f"bench_block_sparse_attention: the tests failed, so nothing is reported.\n{summary}", file=sys.stderr)
        return 1
    print(f"tests passed: {summary}", flush=True)

    device = torch.device("cuda")
    t0 = time.perf_counter()
    if args.quick:
        results = run_benchmark(device=device, seq_lens=[16384], densities=[0.1, 1.0], decode_lens=[],
                                warmup=args.warmup, reps=args.reps)
    else:
        results = run_benchmark(device=device, warmup=args.warmup, reps=args.reps)
    info = provenance(device)
    data = dict(
        op=OP, gpu=info["hardware"].get("gpu"), torch=torch.__version__, triton=info["versions"]["triton"],
        cuda=torch.version.cuda, git_commit=info["git_commit"], git_dirty=info["git_dirty"],
        tests_pass=True, tests_summary=summary, dtype="bfloat16", quick=args.quick,
        heads=HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE, flop_formula=FLOP_FORMULA,
        timing=(f"CUDA events, median of {args.reps} after {args.warmup} warm-up calls; the kernel is timed "
                "with its compressed index prebuilt (index_ms is the build time); masked SDPA gets the "
                "token mask prebuilt"),
        target_met=all(t["met"] for t in results["target"]) if results["target"] else None,
        wall_s=round(time.perf_counter() - t0, 1), **results, provenance=info)
    out_json = args.out / f"{OP}.json"
    write_json_atomic(out_json, data)
    print(f"wrote {out_json}")
    try:
        plot(results["cases"], args.out / f"{OP}.png")
        print(f"wrote {args.out / (OP + '.png')}")
    except ImportError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
    for t in results["target"]:
        print(f"target ({t['target']}): {t['case']}: {t['value']:.2f} vs {t['threshold']:.2f} -> "
              f"{'met' if t['met'] else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
