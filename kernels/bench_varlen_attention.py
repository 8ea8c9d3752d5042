"""GPU benchmark of the packed (varlen) attention kernel against the best PyTorch baselines.

Run (needs CUDA; exits with status 2 and a message otherwise)::

    python -m tokenbook.kernels.bench_varlen_attention --out results/bench [--quick]

It first runs ``tests/kernels/test_varlen_attention.py`` on the GPU (a subprocess, with
``TRITON_INTERPRET`` unset) and reports nothing if they fail. Then, in bf16, for several
length mixes it times, with CUDA events (warm-up excluded, median of repeats):

- the Triton varlen kernel, over a small sweep of (block_m, block_n, num_warps, num_stages);
- padded batched SDPA, ``is_causal=True``, with the flash and with the cuDNN backend: the
  sequences are right-padded to the longest one, ``[B, H, L_max, D]``. With right padding a
  causal mask already hides every pad key from every real query (pad keys come after all real
  ones), so the real rows are exact; the pad rows are computed and thrown away. That waste is
  the cost of padding this benchmark measures. (An explicit key-padding mask would be exact as
  well but bars SDPA from its flash and cuDNN kernels.) Only the SDPA call is timed, not the
  padding copy, which favours the baseline;
- a per-sequence SDPA loop (flash and cuDNN), one call per sequence on pre-built contiguous
  ``[1, H, L_i, D]`` tensors.

For grouped-query cases the baselines get KV heads expanded to Hq (same FLOPs as SDPA's
``enable_gqa``); the kernel reads the Hkv heads directly.

Achieved TFLOP/s count useful causal FLOPs only, the same numerator for every method::

    FLOPs = 4 * D * Hq * sum_i L_i * (L_i + 1) / 2

(two matmuls, QK^T and PV, at 2 FLOPs per multiply-add, over the L_i (L_i + 1) / 2 query-key
pairs that a causal mask keeps in sequence i). Work on padding or on masked-out pairs is not
counted, so padded SDPA's figure is its useful throughput.

Writes ``<out>/varlen_attention.json`` (hardware, versions, git commit, per-case timings,
TFLOP/s, speedups, the best kernel config) and ``<out>/varlen_attention.png``. The project's
stated target — packed attention at least 2x faster than padded SDPA when the longest prompt is
4x the mean — is reported under ``target``, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OP = "varlen_attention"
REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_FILE = Path("tests") / "kernels" / "test_varlen_attention.py"
FLOP_FORMULA = "4 * D * Hq * sum_i L_i * (L_i + 1) / 2  (causal; non-causal: 4 * D * Hq * sum_i L_i^2)"

# Launch configurations swept per head dimension: (block_m, block_n, num_warps, num_stages).
SWEEP = {
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4), (128, 128, 8, 3), (64, 64, 4, 2)],
    128: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3), (128, 128, 8, 2), (64, 64, 4, 2)],
}
# Head layouts: (name, Hq, Hkv, D).
GROUPS = [("mha-d128", 32, 32, 128), ("gqa32x8-d128", 32, 8, 128), ("mha-d64", 32, 32, 64)]
# Length mixes: (kind, max/mean target). Equal and uniform fix their own ratio (1 and ~2).
MIXES = [("equal", 1.0), ("uniform", 2.0), ("lognormal", 2.0), ("lognormal", 4.0), ("lognormal", 8.0)]
TOTALS = [16384, 131072]
MEAN_LEN = 1024
# Agreement between the kernel and SDPA (or two kernel configs) at bf16: both accumulate in fp32,
# so they differ by output rounding (a few bf16 ulps); a real bug shows as O(1) differences.
BF16_MAX_ABS_DIFF = 1e-1


# ----------------------------------------------------------------------------------------------
# Pure parts (unit-tested on CPU in tests/kernels/test_varlen_attention.py)
# ----------------------------------------------------------------------------------------------

def attention_flops(lengths, heads: int, head_dim: int, causal: bool = True) -> float:
    """Useful FLOPs of attention over sequences of the given lengths (see FLOP_FORMULA)."""
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lengths)
    return 4.0 * head_dim * heads * pairs


def make_length_mix(kind: str, total_tokens: int, mean_len: int, max_over_mean: float | None = None,
                    seed: int = 0) -> list[int]:
    """Sequence lengths that sum to exactly ``total_tokens``, about ``mean_len`` on average.

    kind:
      - ``"equal"``: all lengths equal (max/mean = 1; they differ by at most one token);
      - ``"uniform"``: uniform on [1, 2 * mean_len - 1], so max/mean is about 2;
      - ``"lognormal"``: a long tail; its spread is chosen by bisection so that max/mean equals
        ``max_over_mean`` before rounding to whole tokens.
    The result is shuffled (seeded), so the longest sequence is not always first or last.
    """
    if total_tokens < 1 or mean_len < 1:
        raise ValueError("total_tokens and mean_len must be positive")
    n = max(1, round(total_tokens / mean_len))
    rng = np.random.default_rng(seed)
    if kind == "equal":
        weights = np.ones(n)
    elif kind == "uniform":
        weights = rng.uniform(1, 2 * mean_len - 1, size=n)
    elif kind == "lognormal":
        if max_over_mean is None or not 1.0 <= max_over_mean < n:
            raise ValueError(f"lognormal needs 1 <= max_over_mean < number of sequences ({n}), "
                             f"got {max_over_mean}")
        z = rng.standard_normal(n)

        def ratio(sigma):
            w = np.exp(sigma * (z - z.max()))  # shifted for overflow safety; the ratio is unchanged
            return w.max() / w.mean()

        lo, hi = 0.0, 1.0
        while ratio(hi) < max_over_mean:  # max/mean grows monotonically with sigma
            hi *= 2.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ratio(mid) < max_over_mean else (lo, mid)
        weights = np.exp(hi * (z - z.max()))
    else:
        raise ValueError(f"unknown length mix {kind!r}; use equal, uniform or lognormal")
    return _round_to_total(weights, total_tokens)


def _round_to_total(weights: np.ndarray, total: int) -> list[int]:
    """Scale positive weights to integers >= 1 that sum to ``total`` (largest remainder)."""
    n = len(weights)
    if total < n:
        raise ValueError(f"{total} tokens cannot fill {n} sequences of at least one token")
    # Give every sequence its one token first, share the rest in proportion to the weights.
    share = weights / weights.sum() * (total - n)
    lengths = np.floor(share).astype(np.int64)
    leftover = total - n - int(lengths.sum())
    lengths[np.argsort(-(share - lengths), kind="stable")[:leftover]] += 1
    return [int(x) + 1 for x in lengths]


def cu_seqlens_from_lengths(lengths, device="cpu") -> torch.Tensor:
    """int32 ``[S + 1]`` cumulative lengths starting at 0."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    return torch.tensor(cu, dtype=torch.int32, device=device)


def pad_packed(x: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Packed ``[T, H, D]`` -> right-padded, zero-filled ``[B, H, L_max, D]`` (contiguous)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    B = lengths.numel()
    T, H, D = x.shape
    keep = torch.arange(max_len, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # [B, L]
    padded = x.new_zeros(B, max_len, H, D)
    # Row-major order over (b, l) visits real positions sequence by sequence: the packed order.
    padded[keep] = x
    return padded.permute(0, 2, 1, 3).contiguous()


def unpad(padded: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pad_packed`: ``[B, H, L_max, D]`` -> packed ``[T, H, D]``."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().to(padded.device)
    keep = torch.arange(padded.shape[2], device=padded.device)[None, :] < lengths[:, None]
    return padded.permute(0, 2, 1, 3)[keep]


def build_padded_batch(q, k, v, cu_seqlens, max_len: int | None = None):
    """Packed q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` -> padded ``[B, Hq, L_max, D]`` each.

    KV heads are expanded to Hq with ``repeat_interleave`` (query head h reads KV head
    h // (Hq // Hkv), as in the kernel). Pad positions are zeros.
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return tuple(pad_packed(t, cu_seqlens, max_len) for t in (q, k, v))


def padded_sdpa(qp, kp, vp):
    """Causal SDPA over the padded batch; rows past a sequence's end are garbage."""
    return F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)


def config_name(cfg) -> str:
    """(block_m, block_n, num_warps, num_stages) -> "64x64-w4-s3"."""
    return "{}x{}-w{}-s{}".format(*cfg)


def rank_configs(sweep_rows) -> list[dict]:
    """Rank swept configs per head dim by the geometric mean of (their time / the case's best).

    ``sweep_rows``: dicts with ``case``, ``D``, ``config`` and ``ms`` (None when it failed).
    A config that failed in any case ranks after those that ran everywhere.
    """
    ranking = []
    for D in sorted({r["D"] for r in sweep_rows}):
        rows = [r for r in sweep_rows if r["D"] == D]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        fastest = {c: min((r["ms"] for r in rows if r["case"] == c and r["ms"] is not None), default=None)
                   for c in cases}
        per_config = []
        for cfg in dict.fromkeys(r["config"] for r in rows):
            mine = [r for r in rows if r["config"] == cfg]
            logs = [math.log(r["ms"] / fastest[r["case"]]) for r in mine if r["ms"] is not None]
            launch = {k: mine[0][k] for k in ("block_m", "block_n", "num_warps", "num_stages") if k in mine[0]}
            per_config.append(dict(
                D=D, config=cfg, **launch, slowdown_geomean=math.exp(sum(logs) / len(logs)) if logs else None,
                wins=sum(1 for r in mine if r["ms"] is not None and r["ms"] == fastest[r["case"]]),
                cases_timed=len(logs), cases_failed=len(mine) - len(logs)))
        per_config.sort(key=lambda r: (r["cases_failed"] > 0, r["slowdown_geomean"] is None,
                                       r["slowdown_geomean"] or 0.0))
        for rank, row in enumerate(per_config, 1):
            ranking.append(dict(rank=rank, **row))
    return ranking


def _config_dict(cfg) -> dict:
    return dict(zip(("block_m", "block_n", "num_warps", "num_stages"), cfg))


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def time_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------

def run_case(group, kind, target_ratio, total, *, device, dtype=torch.bfloat16, mean_len=MEAN_LEN,
             configs=None, sdpa_backends=("flash", "cudnn"), warmup=5, reps=20, seed=0):
    """Time the kernel (each config) and the baselines on one length mix.

    Returns (row, sweep): one flat summary row for the case, and one row per kernel config.
    """
    from torch.nn.attention import sdpa_kernel

    from .varlen_attention import default_config, varlen_attention

    name, Hq, Hkv, D = group
    lengths = make_length_mix(kind, total, mean_len, target_ratio, seed=seed)
    T, max_len, S = sum(lengths), max(lengths), len(lengths)
    cu = cu_seqlens_from_lengths(lengths, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(T, h, D, generator=gen, device=device, dtype=torch.float32).to(dtype)
               for h in (Hq, Hkv, Hkv))
    useful = attention_flops(lengths, Hq, D)
    tflops = lambda ms: useful / (ms * 1e-3) / 1e12  # noqa: E731
    mix = kind if kind in ("equal", "uniform") else f"{kind}-{target_ratio:g}"
    case_id = f"{name}/{mix}/T{T}"
    row = dict(case=case_id, group=name, Hq=Hq, Hkv=Hkv, D=D, mix=mix, total_tokens=T, seqs=S,
               max_len=max_len, max_over_mean=max_len * S / T, useful_tflop=useful / 1e12,
               padded_work_ratio=attention_flops([max_len] * S, Hq, D) / useful)
    errors = []

    # Kernel: every config; each one's output is checked against the default config's.
    default = default_config(D)
    default_cfg = (default["block_m"], default["block_n"], default["num_warps"], default["num_stages"])
    swept = list(dict.fromkeys([default_cfg] + list(configs if configs is not None else SWEEP.get(D, []))))
    kernel_out = varlen_attention(q, k, v, cu, max_len, backend="triton")
    sweep = []
    for cfg in swept:
        kw = _config_dict(cfg)
        entry = dict(case=case_id, D=D, config=config_name(cfg), **kw, ms=None, tflops=None, error="")
        try:
            out = varlen_attention(q, k, v, cu, max_len, backend="triton", **kw)
            diff = (out.float() - kernel_out.float()).abs().max().item()
            del out
            if not diff <= BF16_MAX_ABS_DIFF:
                entry["error"] = f"output differs from the default config by {diff:.3g}"
            else:
                entry["ms"] = time_ms(lambda: varlen_attention(q, k, v, cu, max_len, backend="triton", **kw),
                                      device, warmup, reps)
                entry["tflops"] = tflops(entry["ms"])
        except Exception as exc:  # e.g. out of shared memory for a large tile
            entry["error"] = _short(exc)
        sweep.append(entry)
        _free(device)
    timed = [e for e in sweep if e["ms"] is not None]
    best = min(timed, key=lambda e: e["ms"]) if timed else None
    row.update(triton_ms=best["ms"] if best else None, triton_tflops=best["tflops"] if best else None,
               triton_config=best["config"] if best else None, triton_default_ms=sweep[0]["ms"])
    errors += [f"{e['config']}: {e['error']}" for e in sweep if e["error"]]

    # Baselines, each checked against the kernel's output once before it is timed.
    qp, kp, vp = build_padded_batch(q, k, v, cu, max_len)
    group_size = Hq // Hkv
    per_seq = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        per_seq.append(tuple(
            t[a:b].repeat_interleave(r, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
            for t, r in ((q, 1), (k, group_size), (v, group_size))))

    def loop():
        return [F.scaled_dot_product_attention(qs, ks, vs, is_causal=True) for qs, ks, vs in per_seq]

    def loop_packed(outs):
        return torch.cat([o[0].transpose(0, 1) for o in outs])

    baseline_ms, agree = {}, []
    for backend in sdpa_backends:
        for layout, fn, to_packed in (("padded", lambda: padded_sdpa(qp, kp, vp), lambda o: unpad(o, cu)),
                                      ("loop", loop, loop_packed)):
            key = f"{layout}_{backend}"
            row[f"{key}_ms"] = None
            try:
                with sdpa_kernel(_sdpa_backend(backend)):
                    diff = (to_packed(fn()).float() - kernel_out.float()).abs().max().item()
                    agree.append(diff <= BF16_MAX_ABS_DIFF)
                    if not agree[-1]:
                        errors.append(f"{key} differs from the kernel by {diff:.3g}")
                    row[f"{key}_ms"] = baseline_ms[key] = time_ms(fn, device, warmup, reps)
            except Exception as exc:  # a backend that cannot take this shape or device
                errors.append(f"{key}: {_short(exc)}")
            _free(device)
    del qp, kp, vp, per_seq
    _free(device)

    row["baselines_agree_with_kernel"] = bool(agree) and all(agree)
    if best and baseline_ms:
        best_name = min(baseline_ms, key=baseline_ms.get)
        row.update(best_baseline=best_name, best_baseline_ms=baseline_ms[best_name],
                   best_baseline_tflops=tflops(baseline_ms[best_name]),
                   speedup_vs_best_baseline=baseline_ms[best_name] / best["ms"])
        padded = {n: ms for n, ms in baseline_ms.items() if n.startswith("padded")}
        if padded:
            best_padded = min(padded, key=padded.get)
            row.update(best_padded=best_padded, speedup_vs_best_padded=padded[best_padded] / best["ms"])
    row["errors"] = "; ".join(errors)
    return row, sweep


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_benchmark(*, device, groups=GROUPS, mixes=MIXES, totals=TOTALS, mean_len=MEAN_LEN,
                  configs=None, sdpa_backends=("flash", "cudnn"), warmup=5, reps=20, seed=0, log=print):
    """All cases. Returns flat tables: cases, config_ranking, best_config, target."""
    cases, sweep = [], []
    for group in groups:
        for total in totals:
            for kind, ratio in mixes:
                t0 = time.perf_counter()
                row, rows = run_case(group, kind, ratio, total, device=device, mean_len=mean_len,
                                     configs=configs, sdpa_backends=sdpa_backends, warmup=warmup,
                                     reps=reps, seed=seed)
                cases.append(row)
                sweep += rows
                log(_case_line(row, time.perf_counter() - t0))
    ranking = rank_configs(sweep)
    best = [{k: v for k, v in r.items() if k != "rank"} for r in ranking if r["rank"] == 1]
    target = [dict(case=c["case"], max_over_mean=c["max_over_mean"], best_padded=c.get("best_padded"),
                   speedup_vs_best_padded=c.get("speedup_vs_best_padded"),
                   met=(c.get("speedup_vs_best_padded") or 0.0) >= 2.0)
              for c in cases if c["mix"] == "lognormal-4"]
    return dict(cases=cases, config_ranking=ranking, best_config=best, target=target)


def _case_line(row, seconds) -> str:
    parts = [f"{row['case']:<34} max/mean {row['max_over_mean']:4.1f}"]
    if row["triton_ms"] is not None:
        parts.append(f"triton {row['triton_ms']:8.3f} ms {row['triton_tflops']:6.1f} TF/s ({row['triton_config']})")
    parts += [f"{k[:-3]} {v:8.3f}" if v is not None else f"{k[:-3]} n/a"
              for k, v in row.items() if k.endswith("_ms") and k.split("_")[0] in ("padded", "loop")]
    if "speedup_vs_best_baseline" in row:
        parts.append(f"x{row['speedup_vs_best_baseline']:.2f} vs {row['best_baseline']}")
    parts.append(f"{seconds:.1f} s")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# Provenance, outputs
# ----------------------------------------------------------------------------------------------

def provenance(device) -> dict:
    """Git commit and dirty flag, versions and hardware (tokenbook.provenance), plus GPU details."""
    import triton

    from tokenbook import provenance as prov

    info = prov.collect()
    info["versions"].update(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                            cudnn=torch.backends.cudnn.version())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["hardware"].update(gpu=props.name, gpu_sm_count=props.multi_processor_count,
                                gpu_memory_gib=round(props.total_memory / 2**30, 1))
    info["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return info


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def plot(cases: list[dict], path: Path) -> None:
    """Useful TFLOP/s per case, one panel per (head layout, total tokens): kernel vs baselines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((c["group"], c["total_tokens"]) for c in cases))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for ax, (group, total) in zip(axes[:, 0], panels):
        rows = [c for c in cases if c["group"] == group and c["total_tokens"] == total]
        names = list(dict.fromkeys(k[:-3] for c in rows for k in c
                                   if k.endswith("_ms") and k.split("_")[0] in ("padded", "loop")))
        series = {"triton varlen (best config)": [c["triton_tflops"] for c in rows]}
        for name in names:
            series[f"SDPA {name.replace('_', ' ')}"] = [
                c["useful_tflop"] / (c[f"{name}_ms"] * 1e-3) if c.get(f"{name}_ms") else None for c in rows]
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(xs, [v or 0.0 for v in values], width, label=label)
        for j, c in enumerate(rows):
            if c.get("speedup_vs_best_baseline"):
                top = max(vals[j] or 0.0 for vals in series.values())
                ax.text(j, top * 1.02, f"x{c['speedup_vs_best_baseline']:.2f}", ha="center", fontsize=8)
        highest = max((v or 0.0 for vals in series.values() for v in vals), default=0.0)
        ax.set_ylim(0, highest * 1.35 or 1.0)  # room for the labels and the legend
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{c['mix']}\nmax/mean {c['max_over_mean']:.1f}" for c in rows], fontsize=8)
        ax.set_ylabel("useful TFLOP/s")
        ax.set_title(f"{group}, {total} tokens (x = kernel's best config vs the best baseline)", fontsize=9)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def run_tests(timeout_s: int = 1800) -> tuple[bool, str]:
    """Run this op's tests on the GPU in a subprocess; return (passed, summary or failure output)."""
    test_file = REPO_ROOT / TEST_FILE
    if not test_file.exists():
        return False, f"test file not found: {test_file}"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", str(TEST_FILE), "-q", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"the tests did not finish within {timeout_s} s"
    output = (proc.stdout + proc.stderr).strip()
    if "No module named pytest" in output:
        return False, f"pytest is not installed for {sys.executable}"
    if proc.returncode != 0:
        return False, output[-4000:]
    return True, output.splitlines()[-1] if output else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    parser.add_argument("--quick", action="store_true",
                        help="one head layout (mha-d128), 16k tokens, lognormal max/mean 4 only")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_varlen_attention: needs a CUDA GPU and none is visible; nothing was measured.",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_varlen_attention: TRITON_INTERPRET is set; unset it (the interpreter is not timed).",
              file=sys.stderr)
        return 2

    print(f"running {TEST_FILE} on the GPU first", flush=True)
    passed, summary = run_tests()
    if not passed:
        print(f"bench_varlen_attention: the tests failed, so nothing is reported.\n{summary}", file=sys.stderr)
        return 1
    print(f"tests passed: {summary}", flush=True)

    device = torch.device("cuda")
    t0 = time.perf_counter()
    if args.quick:
        results = run_benchmark(device=device, groups=GROUPS[:1], mixes=[("lognormal", 4.0)], totals=[16384],
                                warmup=args.warmup, reps=args.reps)
    else:
        results = run_benchmark(device=device, warmup=args.warmup, reps=args.reps)
    info = provenance(device)
    target = results["target"]
    data = dict(
        op=OP,
        gpu=info["hardware"].get("gpu"),
        torch=torch.__version__, triton=info["versions"]["triton"], cuda=torch.version.cuda,
        git_commit=info["git_commit"], git_dirty=info["git_dirty"],
        tests_pass=True, tests_summary=summary,
        dtype="bfloat16", quick=args.quick,
        flop_formula=FLOP_FORMULA,
        timing=(f"CUDA events around each call, median of {args.reps} after {args.warmup} warm-up calls; "
                "padded SDPA times the SDPA call only (padding copies excluded); the loop times per-sequence "
                "calls on inputs built beforehand; GQA baselines read KV heads expanded to Hq; the kernel's "
                "figure is its fastest swept config in that case"),
        target_statement="packed attention >= 2x faster than padded SDPA when the longest prompt is 4x the mean",
        target_met=all(t["met"] for t in target) if target else None,
        wall_s=round(time.perf_counter() - t0, 1),
        **results,
        provenance=info,
    )
    out_json = args.out / f"{OP}.json"
    write_json_atomic(out_json, data)
    print(f"wrote {out_json}")
    try:
        plot(results["cases"], args.out / f"{OP}.png")
        print(f"wrote {args.out / (OP + '.png')}")
    except ImportError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
    for t in target:
        speedup = t["speedup_vs_best_padded"]
        print(f"target ({data['target_statement']}): {t['case']} max/mean {t['max_over_mean']:.2f}: "
              + (f"x{speedup:.2f} vs {t['best_padded']} -> {'met' if t['met'] else 'not met'}"
                 if speedup else "no padded baseline ran"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
