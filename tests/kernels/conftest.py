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
