"""Shared helpers of the Triton ops (imports torch and triton: import on use)."""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is Linux-only
    HAVE_TRITON = False

# TRITON_INTERPRET=1 runs kernels on the CPU through numpy (how CI tests them).
# Its tl.dot mis-handles bfloat16 operands (garbage results seen with triton 3.8),
# so under the interpreter the kernels upcast dot operands to float32.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton when available and the tensors live on CUDA (or under the interpreter)."""
    if not HAVE_TRITON:
        return False
    return all(t.is_cuda for t in tensors) or INTERPRET


def check_float(name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
