"""Compute kernels of clips4rt, below every other layer (they import neither
``clips4rt`` nor ``train``).

- ``kernels/csrc``: C++ (nanobind) sources of the runtime's CPU ops. CMake builds them
  into the runtime package as its private module ``clips4rt._cpu``; their Python
  wrapper and numpy oracles are ``clips4rt.kernels`` (so the installed runtime is the
  one package ``clips4rt``).
- ``kernels.contrastive`` / ``kernels.matching``: torch + Triton ops of the training
  side, each beside its plain-torch reference. They run from a checkout (the wheel
  ships only ``clips4rt``); importing this package imports neither torch nor triton.
"""
