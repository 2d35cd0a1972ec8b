"""Write a folder of images as tar shards (WebDataset-style), which ``python -m train
--data=...`` streams without unpacking:

    python -m train.shards --src /data/images --out /data/shards --per-shard 1000
    python -m train --preset vit-b16 --data='/data/shards/shard-{000000..000099}.tar'

Each image is stored byte for byte (no re-encoding) as ``<8-digit index><suffix>``; the
shards are ``shard-000000.tar``, ``shard-000001.tar``, ... Files are taken in sorted
order; nothing is decoded here (a corrupt file is skipped later, when training reads it).
Symbolic links are not followed, unreadable files are skipped by name.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
import tarfile
import warnings
from pathlib import Path

from clips4rt.files import read_regular
from clips4rt.images import IMAGE_SUFFIXES

MAX_MEMBER_BYTES = 256 << 20  # one image in a shard (training skips larger members)


def _sources(src: Path) -> tuple[list[Path], list[Path]]:
    """(image files under ``src``, sorted; symbolic links skipped): regular files only,
    folders walked without following links, so a link never packs what it points at."""
    files, links = [], []
    for root, dirs, names in os.walk(src, followlinks=False):
        dirs.sort()
        for n in names:
            p = Path(root) / n
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if p.is_symlink():
                links.append(p)
            elif stat.S_ISREG(p.lstat().st_mode):
                files.append(p)
    return sorted(files), links


def _warn_skipped(what: str, paths: list) -> None:
    if paths:
        names = ", ".join(str(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
        warnings.warn(f"skipped {len(paths)} {what}: {names}", stacklevel=3)


def write_shards(src: str | Path, out: str | Path, per_shard: int = 1000) -> list[Path]:
    """Shard every image file under ``src`` (recursive) into ``out``; returns the shards.

    Symbolic links are not followed (a link to a file outside ``src`` would publish it);
    a file that cannot be read is skipped and named in a warning. If the writing fails
    (disk full, ...), the shards this call wrote and its temporary file are removed, so
    that a rerun starts clean."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if per_shard < 1:
        raise ValueError(f"--per-shard must be >= 1, got {per_shard}")
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: no such folder")
    files, links = _sources(src)
    _warn_skipped("symbolic links (not followed)", links)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {src}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")):
        raise ValueError(f"--out {out} already holds shards: choose an empty folder")
    shards: list[Path] = []
    unreadable: list[str] = []
    tmp = None
    try:
        pending = iter(enumerate(files))
        while True:
            path = out / f"shard-{len(shards):06d}.tar"
            tmp = path.with_suffix(".tar.tmp")
            count = 0
            with tarfile.open(tmp, "x", format=tarfile.USTAR_FORMAT) as tar:
                for i, f in pending:
                    try:
                        data = read_regular(f, MAX_MEMBER_BYTES, whole=True,
                                            follow_symlinks=False)  # fmt: skip
                    except OSError as e:
                        unreadable.append(f"{f} ({e.strerror or e})")
                        continue
                    info = tarfile.TarInfo(f"{i:08d}{f.suffix.lower()}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                    count += 1
                    if count == per_shard:
                        break
            if count == 0:
                tmp.unlink()
                break
            os.replace(tmp, path)  # a shard is complete or absent
            shards.append(path)
    except BaseException:
        for p in [*shards, tmp]:
            if p is not None:
                p.unlink(missing_ok=True)
        raise
    _warn_skipped("unreadable files", unreadable)
    if not shards:
        raise ValueError(f"none of the {len(files)} image files under {src} could be read")
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
