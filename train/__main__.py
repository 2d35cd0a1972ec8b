"""``python -m train --preset toy [--key=value ...] [--resume]``: CLIP-S4 training."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import argparse

    from train.config import load_config

    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--preset", default="toy", help="train/presets/<name>.json or a JSON path")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args, rest = p.parse_known_args(argv)
    try:
        cfg = load_config(args.preset, rest)
        from train import distributed
        from train.loop import train

        try:
            last = train(cfg, resume=args.resume)
        finally:
            distributed.cleanup()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
