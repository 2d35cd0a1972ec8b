"""Write a folder of images as tar shards (WebDataset-style), which ``python -m train
--data=...`` streams without unpacking:

    python -m train.shards --src /data/images --out /data/shards --per-shard 1000
    python -m train --preset vit-b16 --data='/data/shards/shard-{000000..000099}.tar'

Each image is stored byte for byte (no re-encoding) as ``<8-digit index><suffix>``; the
shards are ``shard-000000.tar``, ``shard-000001.tar``, ... Files are taken in sorted
order; nothing is decoded here (a corrupt file is skipped later, when training reads it).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

from clips4rt.images import IMAGE_SUFFIXES


def write_shards(src: str | Path, out: str | Path, per_shard: int = 1000) -> list[Path]:
    """Shard every image file under ``src`` (recursive) into ``out``; returns the shards."""
    src, out = Path(src), Path(out)
    if per_shard < 1:
        raise ValueError(f"--per-shard must be >= 1, got {per_shard}")
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: no such folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {src}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")):
        raise ValueError(f"--out {out} already holds shards: choose an empty folder")
    shards = []
    for first in range(0, len(files), per_shard):
        path = out / f"shard-{first // per_shard:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, f in enumerate(files[first : first + per_shard], start=first):
                data = f.read_bytes()
                info = tarfile.TarInfo(f"{i:08d}{f.suffix.lower()}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)  # a shard is complete or absent
        shards.append(path)
    return shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", required=True, help="folder of images (recursive)")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--per-shard", type=int, default=1000, help="images per shard")
    args = p.parse_args(argv)
    try:
        shards = write_shards(args.src, args.out, args.per_shard)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(shards)} shards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
