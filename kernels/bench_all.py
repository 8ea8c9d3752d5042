"""Run every kernel benchmark in one go (``make bench``)::

    python -m tokenbook.kernels.bench_all --out results/bench [--quick] [--only NAME ...]

Each benchmark module in :data:`BENCHES` runs its own tests on the GPU first and writes
``<out>/<op>.json`` and ``.png``; one failing or crashing benchmark does not stop the others.
The exit status is 0 when every benchmark succeeded, 2 when there is no CUDA GPU (nothing is
measured), 1 otherwise. A one-line summary per benchmark is printed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

# Module names under tokenbook.kernels, in the order they run.
BENCHES = ["bench_varlen_attention", "bench_block_sparse_attention", "bench_softplus_attention"]


def bench_argv(out: Path, quick: bool) -> list[str]:
    """The command line every benchmark module's ``main`` accepts."""
    return ["--out", str(out)] + (["--quick"] if quick else [])


def summarize(statuses: dict[str, tuple[int, float]]) -> tuple[int, list[str]]:
    """Overall exit status and one line per benchmark from ``{name: (exit status, seconds)}``."""
    meaning = {0: "ok", 1: "tests failed or error", 2: "skipped (no CUDA GPU)"}
    lines = [f"{name:<32} {meaning.get(rc, f'exit {rc}'):<24} {sec:8.1f} s" for name, (rc, sec) in statuses.items()]
    codes = {rc for rc, _ in statuses.values()}
    if not codes or codes == {0}:
        return 0, lines
    if codes == {2}:
        return 2, lines
    return 1, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these benchmark modules")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_all: needs a CUDA GPU and none is visible; nothing was measured.", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_all: TRITON_INTERPRET is set; unset it (the interpreter is not timed).", file=sys.stderr)
        return 2
    statuses = {}
    for name in args.only or BENCHES:
        print(f"=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"tokenbook.kernels.{name}")
            rc = int(module.main(bench_argv(args.out, args.quick)) or 0)
        except Exception:  # one crashing benchmark must not hide the others' results
            traceback.print_exc()
            rc = 1
        statuses[name] = (rc, time.perf_counter() - t0)
    status, lines = summarize(statuses)
    print("=== summary ===")
    for line in lines:
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
