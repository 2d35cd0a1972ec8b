"""Bounded reads of untrusted files: only regular files, never more than asked.

One helper for every place that reads a file a user or another program may have put
there (prompt-cache entries, tar shard members, files packed into shards): the file is
opened without blocking and checked with ``fstat`` before a byte is read, so a FIFO or
device at that name fails at once instead of blocking, and the size is checked before
anything is allocated.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_regular(
    path: str | Path,
    length: int,
    offset: int = 0,
    *,
    whole: bool = False,
    follow_symlinks: bool = True,
) -> bytes:
    """At most ``length`` bytes of the regular file ``path`` from ``offset`` (fewer where
    the file ends first).

    ``whole``: the file must be at most ``length`` bytes, else OSError (EFBIG) before any
    read. ``follow_symlinks=False`` refuses a symbolic link (ELOOP). A file that is not
    a regular file raises OSError (EINVAL); so do the usual open errors."""
    flags = os.O_RDONLY | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if whole and st.st_size > length:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, over the limit of {length}",
                          str(path))  # fmt: skip
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temporary name in the same folder and
    a rename: a reader sees the old file or the whole new one, and an error leaves
    neither a partial file nor the temporary behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_image_atomic(img, path: str | Path) -> None:
    """Save a PIL image (``clips4rt.visualize.save_image``'s settings) as
    :func:`write_atomic` writes bytes: a hidden temporary name, then a rename; on any
    error nothing (no 0-byte or partial file) is left at either name."""
    from clips4rt.visualize import save_image

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        save_image(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
