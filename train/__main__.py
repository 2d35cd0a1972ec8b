"""``python -m train --preset toy [--key=value ...] [--resume | --overwrite]``: CLIP-S4
training."""

from __future__ import annotations

import os
import sys
import traceback


def torch_oom() -> type:
    """torch's out-of-memory error (a RuntimeError, its message names the sizes)."""
    import torch

    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from train.method.config import config_help, load_config

    p = argparse.ArgumentParser(
        prog="python -m train",
        description=__doc__,
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="toy", help="train/presets/<name>.json or a JSON path")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that holds another one (its files move to "
        "<out>/previous-<time>/)",
    )
    args, rest = p.parse_known_args(argv)
    try:
        cfg = load_config(args.preset, rest)
        from train.method import distributed
        from train.method.loop import train

        try:
            last = train(cfg, resume=args.resume, overwrite=args.overwrite)
        finally:
            distributed.cleanup()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from train.method.loop import TrainingStopped

        if not isinstance(e, (TrainingStopped, torch_oom())):  # a bug: where it happened
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
