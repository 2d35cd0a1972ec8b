"""Reading training checkpoints without running code: ``torch.load(...,
weights_only=True)``, so a file that needs any other pickle global (which could run code
while loading) is refused with :class:`CheckpointError`, never executed. Writing them,
and converting old ones, is ``train.checkpoint``'s (a checkout's training package)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

CONVERT = "python -m train.checkpoint --convert {path} NEW.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: refused (unsafe) or unreadable (corrupt)."""

    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


def load(path, what: str = "checkpoint") -> dict:
    """Load a training checkpoint with ``weights_only=True``; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused - loading it would unpickle objects other than tensors, "
            "numbers, strings and containers, which can run arbitrary code. If it is an "
            "older clips4rt checkpoint, convert it once (no code runs then either) with "
            f"`{CONVERT.format(path=path)}`."
        ) from None
    except Exception as e:  # truncated / not a torch file: zip and EOF errors
        raise CheckpointError(
            f"{path}: not a readable {what} ({type(e).__name__}: {str(e)[:200]}); the file "
            "is truncated or of another format",
            corrupt=True,
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a clips4rt {what} (a {type(ckpt).__name__})")
    return ckpt
