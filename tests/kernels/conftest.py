"""Shared setup for the kernel tests.

- Where no CUDA GPU is visible, the Triton CPU interpreter is switched on. Triton reads
  TRITON_INTERPRET when a kernel is decorated, i.e. when a kernel module is imported, so it is
  set here, before any test module imports one. An explicit TRITON_INTERPRET in the environment
  wins. (Importing torch does not import triton.)
- ``KERNEL_DEVICES`` lists where a Triton kernel can run in this process: "cpu" under the
  interpreter, "cuda" when a GPU is there and the interpreter is off.
- Every test runs with ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` returning
  NaN-filled floating tensors, so an output element a kernel forgets to write shows up as NaN.
  (Uninitialised memory may hold anything, so correct code cannot tell the difference.)
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CUDA = torch.cuda.is_available()
KERNEL_DEVICES = (["cpu"] if INTERPRET else []) + (["cuda"] if CUDA and not INTERPRET else [])
ALL_DEVICES = ["cpu"] + (["cuda"] if CUDA else [])

# A kernel module imported before this file ran (say by a library test collected earlier) was
# decorated for the GPU; re-import it so its kernels are decorated for the interpreter too.
if INTERPRET:
    for _name in sorted(m for m in list(sys.modules) if m.startswith("tokenbook.kernels.")):
        importlib.reload(sys.modules[_name])

import pytest  # noqa: E402


def _poisoned(factory):
    def make(*args, **kwargs):
        t = factory(*args, **kwargs)
        if t.is_floating_point() or t.is_complex():
            with torch.no_grad():
                t.fill_(float("nan"))
        return t
    return make


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))


def pytest_configure(config):
    # triton 3.6's interpreter turns 1-element arrays into loop bounds with int(); numpy >= 1.25
    # warns about it on every call (and numpy >= 2.4 refuses, hence the numpy pin).
    config.addinivalue_line(
        "filterwarnings", "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")


def pytest_generate_tests(metafunc):
    # `kernel_device`: where the Triton kernel runs here; `any_device`: every device torch has.
    if "kernel_device" in metafunc.fixturenames:
        metafunc.parametrize("kernel_device", KERNEL_DEVICES)
    if "any_device" in metafunc.fixturenames:
        metafunc.parametrize("any_device", ALL_DEVICES)


# ----------------------------------------------------------------------------------------------
# One table of per-op, per-dtype tolerances for the kernel-vs-twin tests, and the helper that
# applies it. Entries: (max-abs error, relative error = ||out - ref|| / ||ref||). bf16/fp16 errors
# are dominated by rounding the output (and P before the PV product). Tests get the helper
# through the `assert_close_op` fixture; the largest errors seen per (op, dtype) are printed at
# the end of the run, so a report can quote them.
# ----------------------------------------------------------------------------------------------

OP_TOLERANCES = {
    "block_sparse_attention": {
        torch.float32: (2e-5, 1e-5), torch.float16: (4e-3, 2e-3), torch.bfloat16: (4e-2, 1.5e-2)},
    # Softplus attention in fp32, forward and gradients (sums of softplus and powers amplify
    # rounding a little more than softmax does).
    "softplus_attention": {torch.float32: (5e-5, 2e-5), torch.bfloat16: (5e-2, 2e-2)},
    "softplus_attention_grad": {torch.float32: (2e-4, 1e-4), torch.bfloat16: (1e-1, 4e-2)},
}
_MAX_ERRORS: dict = {}


def check_close(op, name, ref, out, dtype=None):
    """Compare ``out`` with ``ref`` in fp32 under OP_TOLERANCES[op][dtype or out.dtype]."""
    dtype = dtype or out.dtype
    atol, rtol = OP_TOLERANCES[op][dtype]
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    ref32, out32 = ref.detach().float().cpu(), out.detach().float().cpu()
    n_bad = int((~torch.isfinite(out32)).sum())
    diff = (ref32 - out32).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    rel = (diff.norm() / ref32.norm().clamp_min(1e-30)).item() if diff.numel() else 0.0
    key = (op, str(dtype).replace("torch.", ""))
    seen = _MAX_ERRORS.get(key, (0.0, 0.0))
    _MAX_ERRORS[key] = (max(seen[0], max_abs), max(seen[1], rel))
    msg = (f"{name}: max-abs error {max_abs:.3e} (tolerance {atol:.1e}), relative error {rel:.3e} "
           f"(tolerance {rtol:.1e}), non-finite outputs {n_bad}/{out32.numel()}")
    assert n_bad == 0 and max_abs <= atol and rel <= rtol, msg


@pytest.fixture
def assert_close_op():
    """``assert_close_op(op, name, ref, out, dtype=None)``: check_close as a fixture."""
    return check_close


def pytest_terminal_summary(terminalreporter):
    if _MAX_ERRORS:
        terminalreporter.write_line("largest kernel-vs-twin errors (max-abs, relative) per op and dtype:")
        for (op, dtype), (max_abs, rel) in sorted(_MAX_ERRORS.items()):
            terminalreporter.write_line(f"  {op:<28} {dtype:<9} {max_abs:.2e}  {rel:.2e}")
