"""Compute kernels of clips4rt.

Importing this package imports neither torch nor triton:

- ``kernels.cpu``: numpy ops of the runtime, with a C++ (nanobind) implementation
  used when the extension is built and a numpy reference otherwise.
- ``kernels.contrastive`` / ``kernels.matching``: torch + Triton ops for training
  (imported on use).
"""

from kernels.cpu import HAVE_NATIVE

__all__ = ["HAVE_NATIVE"]
