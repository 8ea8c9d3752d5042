"""GPU benchmark of softplus attention (LSSA / LSSAR) against the best PyTorch baselines in one run.

Run (needs CUDA; exits with status 2 and a message otherwise)::

    python -m tokenbook.kernels.bench_softplus_attention --out results/bench [--quick]

It first runs ``tests/kernels/test_softplus_attention.py`` on the GPU (``TRITON_INTERPRET``
unset) and reports nothing if they fail. Then, in bf16 with B=1, H=32, D=128, causal, for
sequence lengths 1k..64k and the re-weighting powers p = 1 (LSSA) and p = 2 (LSSAR), it times
forward and forward+backward with CUDA events (median of repeats after warm-up):

- the Triton kernels (:func:`tokenbook.kernels.softplus_attention.softplus_attention`);
- the same math in PyTorch, the best way PyTorch has to compute it: the twin's materialised
  weights in bf16 matmuls with fp32 softplus/normalisation (``_torch_softplus``), compiled with
  ``torch.compile`` when that works, eager otherwise — while its ``[B, H, N, N]`` weights fit in
  memory (``MATERIALISED_BYTES_LIMIT``); its output is checked against the kernel's;
- SDPA causal **softmax** attention, flash and cuDNN backends: not the same function, but the
  speed of the attention this op replaces (the price of leaving softmax's fused kernels).

TFLOP/s count ``4 * D * H * N(N+1)/2`` for the forward (two matmuls over the causal pairs) and
3.5× that for forward+backward (the backward costs 2.5 forwards), for every arm. Writes ``<out>/softplus_attention.json`` and
``.png``. Targets (reported, never asserted): the kernel at least as fast as the PyTorch version of
the same op everywhere, and within 2× of SDPA-flash's softmax speed at N >= 16k.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench_block_sparse_attention import run_tests as _run_tests
from .bench_varlen_attention import _free, _sdpa_backend, _short, provenance, time_ms, write_json_atomic

OP = "softplus_attention"
TEST_FILES = [Path("tests") / "kernels" / "test_softplus_attention.py"]
SEQ_LENS = [1024, 4096, 16384, 65536]
POWERS = [1.0, 2.0]
HEADS, HEAD_DIM = 32, 128
MATERIALISED_BYTES_LIMIT = 40 * 2**30
BF16_MAX_ABS_DIFF = 5e-2
FLOP_FORMULA = "forward 4 * D * H * N(N+1)/2; forward+backward 3.5x the forward"


# ----------------------------------------------------------------------------------------------
# Pure parts (unit-tested on CPU in tests/kernels/test_softplus_attention.py)
# ----------------------------------------------------------------------------------------------

def causal_flops(n: int, heads: int, head_dim: int, backward: bool = False) -> float:
    fwd = 4.0 * head_dim * heads * n * (n + 1) / 2
    return fwd * (3.5 if backward else 1.0)


def materialised_bytes(n: int, heads: int, backward: bool) -> int:
    """Bytes the PyTorch version holds at once: fp32 scores/weights [H, N, N], ~3 of them (6 with grad)."""
    return (6 if backward else 3) * 4 * heads * n * n


def _torch_softplus(q, k, v, p: float, log_base: float):
    """The op in PyTorch, memory-lean: bf16 matmuls, fp32 elementwise (same formula as the twin)."""
    T, D = q.shape[-2], q.shape[-1]
    pos = torch.arange(T, device=q.device)
    lam = (torch.log((pos + 1).float()) / math.log(log_base))[:, None]
    s = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))
    w = F.softplus(lam * s)
    if p != 1.0:
        w = w ** p
    w = w.masked_fill(pos[None, :] > pos[:, None], 0.0)
    w = w / w.sum(-1, keepdim=True)
    return (w.to(v.dtype) @ v)


def targets(cases: list[dict]) -> list[dict]:
    rows = []
    for c in cases:
        if c.get("kernel_ms") is None:
            continue
        if c.get("torch_ms"):
            rows.append(dict(case=c["case"], target="kernel >= PyTorch version of the same op",
                             value=c["torch_ms"] / c["kernel_ms"], threshold=1.0,
                             met=c["torch_ms"] / c["kernel_ms"] >= 1.0))
        if c["seq_len"] >= 16384 and c.get("sdpa_flash_ms"):
            v = c["sdpa_flash_ms"] / c["kernel_ms"]
            rows.append(dict(case=c["case"], target="within 2x of SDPA-flash softmax (N >= 16k)",
                             value=v, threshold=0.5, met=v >= 0.5))
    return rows


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def _sdpa(q, k, v, backend):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(_sdpa_backend(backend)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _fwd_bwd(fn, q, k, v, do):
    def step():
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(do)
    return step


def run_case(N, p, *, device, heads=HEADS, head_dim=HEAD_DIM, dense_backends=("flash", "cudnn"),
             compile_torch=True, warmup=3, reps=10, seed=0, log=print) -> list[dict]:
    from .softplus_attention import softplus_attention

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, do = (torch.randn(1, heads, N, head_dim, generator=gen, device=device, dtype=dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    log_base = float(head_dim)
    kernel = lambda a, b, c: softplus_attention(a, b, c, p=p, log_base=log_base)  # noqa: E731
    torch_fn = lambda a, b, c: _torch_softplus(a, b, c, p, log_base)  # noqa: E731
    torch_impl = "eager"
    if compile_torch and device.type == "cuda":
        try:
            compiled = torch.compile(torch_fn, dynamic=False)
            torch_fn, torch_impl = compiled, "torch.compile"
        except Exception:  # compile unavailable: eager is then the best PyTorch has
            pass
    rows = []
    for mode in ("forward", "forward+backward"):
        bwd = mode != "forward"
        row = dict(case=f"{mode}/N{N}/p{p:g}", mode=mode, seq_len=N, p=p, heads=heads, head_dim=head_dim,
                   dtype=str(dtype).replace("torch.", ""), torch_impl=torch_impl)
        errors = []
        flops = causal_flops(N, heads, head_dim, bwd)
        tf = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
        with torch.set_grad_enabled(bwd):
            run = _fwd_bwd(kernel, q, k, v, do) if bwd else (lambda: kernel(q, k, v))
            row["kernel_ms"] = time_ms(run, device, warmup, reps)
            row["kernel_tflops"] = tf(row["kernel_ms"])
            row["torch_ms"] = None
            if materialised_bytes(N, heads, bwd) <= MATERIALISED_BYTES_LIMIT:
                try:
                    if not bwd:
                        diff = (torch_fn(q, k, v).float() - kernel(q, k, v).float()).abs().max().item()
                        row["max_abs_diff_vs_torch"] = diff
                        if not diff <= BF16_MAX_ABS_DIFF:
                            errors.append(f"kernel differs from the PyTorch version by {diff:.3g}")
                    trun = _fwd_bwd(torch_fn, q, k, v, do) if bwd else (lambda: torch_fn(q, k, v))
                    row["torch_ms"] = time_ms(trun, device, warmup, reps)
                    row["torch_tflops"] = tf(row["torch_ms"])
                    row["speedup_vs_torch"] = row["torch_ms"] / row["kernel_ms"]
                except Exception as exc:  # out of memory at the edge: recorded, not fatal
                    errors.append(f"torch: {_short(exc)}")
                _free(device)
            for backend in dense_backends:
                key = f"sdpa_{backend}_ms"
                row[key] = None
                try:
                    srun = _fwd_bwd(lambda a, b, c: _sdpa(a, b, c, backend), q, k, v, do) if bwd else \
                        (lambda: _sdpa(q, k, v, backend))
                    row[key] = time_ms(srun, device, warmup, reps)
                    row[f"sdpa_{backend}_tflops"] = tf(row[key])
                except Exception as exc:
                    errors.append(f"sdpa_{backend}: {_short(exc)}")
                _free(device)
        row["errors"] = "; ".join(errors)
        log(f"{row['case']:<32} kernel {row['kernel_ms']:9.3f} ms ({row['kernel_tflops']:6.1f} TF/s)  "
            f"torch {row['torch_ms'] or float('nan'):9.3f} ms  flash {row.get('sdpa_flash_ms') or float('nan'):8.3f} ms"
            + (f"  [{row['errors']}]" if errors else ""))
        rows.append(row)
    return rows


def run_benchmark(*, device, seq_lens=SEQ_LENS, powers=POWERS, log=print, **kw) -> dict:
    cases = []
    for N in seq_lens:
        for p in powers:
            cases.extend(run_case(N, p, device=device, log=log, **kw))
            _free(device)
    return {"cases": cases, "target": targets(cases)}


def plot(cases: list[dict], path: Path) -> None:
    """TFLOP/s vs N: the kernel, the PyTorch version, SDPA softmax; forward and forward+backward."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["forward", "forward+backward"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for p, marker in ((1.0, "o"), (2.0, "s")):
            rows = sorted((c for c in cases if c["mode"] == mode and c["p"] == p), key=lambda c: c["seq_len"])
            if not rows:
                continue
            xs = [c["seq_len"] for c in rows]
            ax.plot(xs, [c["kernel_tflops"] for c in rows], marker + "-", label=f"Triton p={p:g}")
            pts = [(c["seq_len"], c["torch_tflops"]) for c in rows if c.get("torch_tflops")]
            if pts:
                ax.plot(*zip(*pts), marker + ":", color="gray", label=f"PyTorch p={p:g}")
        rows = sorted((c for c in cases if c["mode"] == mode and c["p"] == 1.0), key=lambda c: c["seq_len"])
        for key, style in (("sdpa_flash_tflops", "--"), ("sdpa_cudnn_tflops", "-.")):
            pts = [(c["seq_len"], c[key]) for c in rows if c.get(key)]
            if pts:
                ax.plot(*zip(*pts), style, color="k" if "flash" in key else "tab:red",
                        label=f"SDPA {key.split('_')[1]} (softmax)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(mode, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="N = 4k and 16k, p = 2 only")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_softplus_attention: needs a CUDA GPU and none is visible; nothing was measured.",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_softplus_attention: TRITON_INTERPRET is set; unset it.", file=sys.stderr)
        return 2
    print(f"running {', '.join(map(str, TEST_FILES))} on the GPU first", flush=True)
    passed, summary = _run_tests(TEST_FILES)
    if not passed:
        print(f"bench_softplus_attention: the tests failed, so nothing is reported.\n{summary}", file=sys.stderr)
        return 1
    print(f"tests passed: {summary}", flush=True)
    device = torch.device("cuda")
    t0 = time.perf_counter()
    kw = dict(warmup=args.warmup, reps=args.reps)
    results = (run_benchmark(device=device, seq_lens=[4096, 16384], powers=[2.0], **kw) if args.quick
               else run_benchmark(device=device, **kw))
    info = provenance(device)
    data = dict(
        op=OP, gpu=info["hardware"].get("gpu"), torch=torch.__version__, triton=info["versions"]["triton"],
        cuda=torch.version.cuda, git_commit=info["git_commit"], git_dirty=info["git_dirty"],
        tests_pass=True, tests_summary=summary, dtype="bfloat16", quick=args.quick, heads=HEADS,
        head_dim=HEAD_DIM, flop_formula=FLOP_FORMULA,
        timing=f"CUDA events, median of {args.reps} after {args.warmup} warm-up calls",
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
