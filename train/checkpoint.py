"""Training checkpoints that load without running code.

Everything ``python -m train`` writes (weights, optimizer and scheduler state, RNG
states, config, prototypes, teacher provenance) is tensors, numbers, strings, lists,
tuples and dicts, so every reader opens it with ``torch.load(..., weights_only=True)``:
a file that needs any other pickle global (which could run code while loading) is
refused with :class:`CheckpointError`, never executed.

Checkpoints written before this format stored numpy's RNG state as an ndarray and are
refused too. Convert one with (still weights-only: besides tensors it admits just the
numpy array type that old format used, so it runs no code either)::

    python -m train.checkpoint --convert OLD.pt NEW.pt
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

from clips4rt.export.checkpoint import CONVERT, CheckpointError, load

__all__ = [
    "CONVERT",
    "CheckpointError",
    "convert",
    "load",
    "numpy_rng_state",
    "save",
    "set_numpy_rng_state",
]


def numpy_rng_state(state: tuple | None = None) -> dict:
    """``np.random.get_state()`` (or ``state``) as tensors and numbers (safe to unpickle)."""
    key, keys, pos, has_gauss, gauss = np.random.get_state() if state is None else state
    return {
        "key": str(key),
        "keys": torch.from_numpy(np.asarray(keys, np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def set_numpy_rng_state(s: dict) -> None:
    keys = s["keys"].numpy().astype(np.uint32)
    np.random.set_state((s["key"], keys, s["pos"], s["has_gauss"], s["gauss"]))


def save(state: dict, path: Path) -> None:
    """Write atomically: a temp file, flushed to disk, then renamed over ``path``; on
    any error the temp file is removed and ``path`` is as it was."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no partial file left to trip the next --resume
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power loss once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def convert(src, dst) -> None:
    """Rewrite an older (trusted) checkpoint in the weights-only format."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("write the converted checkpoint to another path than the source")
    # the old format's one non-tensor object: numpy's RNG state array; nothing else
    reconstruct = getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct
    uint32 = type(np.dtype(np.uint32))  # the dtype class of MT19937's key array
    with torch.serialization.safe_globals([reconstruct, np.ndarray, np.dtype, uint32]):
        try:
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{src}: holds objects other than tensors, containers and numpy arrays; not "
                f"a clips4rt checkpoint this tool can convert safely ({str(e)[:200]})"
            ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{src} is not a clips4rt checkpoint")
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = numpy_rng_state(rng["numpy"])
    save(ckpt, dst)
    try:
        load(dst)  # the result must load safely, or it is not left behind
    except CheckpointError:
        dst.unlink()
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--convert", nargs=2, metavar=("OLD", "NEW"), required=True)
    args = p.parse_args(argv)
    try:
        convert(*args.convert)
    except (ValueError, OSError, pickle.UnpicklingError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.convert[1]} (loads with weights_only=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
