"""Triton kernels with PyTorch twins (imported as tokenbook.kernels)."""
