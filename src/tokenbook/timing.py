"""Wall-clock timing and peak memory, the same way for every method and baseline.

On CUDA: CUDA events around the call, after a synchronize; peak memory from the allocator.
On CPU: time.perf_counter; peak memory is not tracked (torch has no CPU allocator statistics),
so memory claims are judged on GPU only.
"""
from __future__ import annotations

import time
from typing import Callable


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds for one call of fn()."""
    if device == "cuda":
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                device: str = "cpu") -> dict[str, list[float]]:
    """Time several arms in interleaved rounds (A B C, A B C, ...) so drift hits every arm alike.

    Returns {arm: [seconds per repeat]}; warm-up rounds are run and discarded.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(time_call(fn, device))
    return out


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> float | None:
    """Peak bytes allocated during fn() above what was allocated before (CUDA only; None on CPU)."""
    if device != "cuda":
        return None
    import torch
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)
