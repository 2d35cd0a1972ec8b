"""Unlabeled training images: the toy-world generator, a folder of image files, or tar
shards of images (WebDataset-style ``.tar`` files).

All give uint8 (b, S, S, 3) RGB batches of full images (S = ``teacher_size``, b = this
rank's share of the global batch); the two augmented views are cut from them in the
loop (``train.method.augment``).

Folders and shards go through ``torch.utils.data.DataLoader`` worker processes
(``--workers``, ``--prefetch``). The sample stream is a pure function of (seed, step,
slot): the image in slot i of global step s is the catalog entry at position
(s * batch + i) mod N of the epoch's permutation (epoch = (s * batch + i) // N, one
``randperm`` per (seed, epoch)). Rank r decodes only its slots [r*b, (r+1)*b), worker w
of W only the steps s = w (mod W), and the loader hands the steps back in order, so the
stream is the same for any number of workers and ranks, and ``--resume`` at step s
restarts it at step s exactly. A file that fails to decode is skipped for the next
entry of the permutation (the same one on every run), counted, and named in the log;
it never stops training.

Shards are indexed once (member headers only, no decoding) and read by offset, never
unpacked; a truncated shard keeps its complete members (with a warning), a file that
is not a tar is skipped with a warning. JPEGs decode at a reduced scale when they are
much larger than S (``load_image(min_side=)``).

Shards and patterns are untrusted: a header whose size or offset runs backwards ends
the shard's index (a negative base-256 size used to send tarfile round in a loop), a
member over ``MAX_MEMBER_BYTES`` is skipped by name before anything is read, a brace
pattern is counted before it is expanded (at most ``MAX_PATTERNS`` names), and a file
is read only while it is a regular file (a FIFO swapped in never blocks a reader).
"""

from __future__ import annotations

import glob
import itertools
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clips4rt.errors import ImageError
from clips4rt.files import read_regular
from clips4rt.images import IMAGE_SUFFIXES, load_image
from train.shards import MAX_MEMBER_BYTES


def _square(img: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The centre square of ``img`` resized to size x size (bilinear): the short side
    resized to ``size``, the long one centre-cropped. Only the square is resampled
    (PIL's ``box``), a third less work than resizing all of a 4:3 photo. Written into
    ``out`` (size, size, 3) when given."""
    h, w = img.shape[:2]
    side = min(h, w)
    y, x = (h - side) / 2, (w - side) / 2
    sq = Image.fromarray(img).resize((size, size), Image.BILINEAR, box=(x, y, x + side, y + side))
    if out is None:
        return np.asarray(sq)
    out[...] = np.asarray(sq)
    return out


class ToySource:
    """``pool`` toy scenes (seed ``seed``) generated up front, sampled with replacement
    (in the training process: no decoding to parallelise)."""

    def __init__(self, seed: int, pool: int, size: int):
        from train.toyworld import make_scene

        if pool < 1:
            raise ValueError(f"toy_pool must be positive, got {pool}")
        self.images = torch.from_numpy(
            np.stack([_square(make_scene(seed, i).image, size) for i in range(pool)])
        )
        self.skipped = 0

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self.images[torch.randint(len(self.images), (n,), generator=gen)]


# ------------------------------------------------------------------ catalog
MAX_PATTERNS = 100_000  # names a brace pattern may expand to


@dataclass(frozen=True)
class Entry:
    """One image: a file (``offset`` -1), or a member of a tar shard read at
    ``offset``, ``size`` bytes."""

    path: str
    offset: int = -1
    size: int = 0
    member: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    def load(self, min_side: int) -> np.ndarray:
        if self.offset < 0:
            if not Path(self.path).is_file():  # a FIFO swapped in: never opened
                raise ImageError(f"{self.path} is not a regular file")
            return load_image(self.path, min_side=min_side)
        if not 0 <= self.size <= MAX_MEMBER_BYTES:
            raise ImageError(f"{self}: {self.size} bytes, over {MAX_MEMBER_BYTES}")
        try:
            data = read_regular(self.path, self.size, self.offset)
        except OSError as e:  # swapped for a FIFO or a folder since indexing, or gone
            raise ImageError(f"{self}: {e.strerror or e}") from None
        if len(data) < self.size:
            raise ImageError(f"{self}: the shard ends inside this member")
        return load_image(data, min_side=min_side)


def _brace_group(pattern: str):
    """(head, options as a range or a list, zero-padding width, tail) of the first
    ``{...}``, or None."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return None
    r = re.fullmatch(r"(\d+)\.\.(\d+)", m.group(1))
    opts = range(int(r[1]), int(r[2]) + 1) if r else m.group(1).split(",")
    return pattern[: m.start()], opts, len(r[1]) if r else 0, pattern[m.end() :]


def _brace_count(pattern: str) -> int:
    """How many names ``pattern`` expands to, without expanding it (options hold no
    braces, so every option leaves the same groups behind)."""
    count = 1
    while (g := _brace_group(pattern)) is not None:
        head, opts, _, tail = g
        # len() of a range over 2**63 names overflows: count it arithmetically
        count *= max(0, opts.stop - opts.start) if isinstance(opts, range) else len(opts)
        if count > MAX_PATTERNS:
            return count
        pattern = head + "x" + tail
    return count


def _braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` and ``{000..012}`` (zero-padded ranges) as WebDataset does; at
    most ``MAX_PATTERNS`` names (counted first: a pattern never allocates past that)."""
    n = _brace_count(pattern)
    if n > MAX_PATTERNS:
        raise ValueError(
            f"--data={pattern} expands to at least {n} names, over "
            f"the limit of {MAX_PATTERNS}: narrow the ranges, or give the shards' folder "
            "or a glob (shards/*.tar)"
        )
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    g = _brace_group(pattern)
    if g is None:
        return [pattern]
    head, opts, width, tail = g
    names = [str(o).zfill(width) for o in opts] if width else opts
    return [x for o in names for x in _expand(head + o + tail)]


def shard_entries(path: Path) -> list[Entry]:
    """The image members of one tar shard (headers only). A truncated shard gives its
    complete members, a file that is not a tar none (each with a warning)."""
    entries = []
    big: list[str] = []
    if not path.is_file():
        warnings.warn(f"skipping {path}: not a regular file", stacklevel=2)
        return entries
    end = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:  # random access: reads headers, seeks past data
            last = -1
            while (m := tar.next()) is not None:
                if m.offset <= last or m.size < 0 or m.offset_data < m.offset:
                    raise tarfile.ReadError(f"corrupt header of {m.name!r} (size {m.size})")
                last = m.offset
                tar.members.clear()  # the index is ours: tarfile need not keep every header
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    if m.offset_data + m.size > end:
                        raise tarfile.ReadError("unexpected end of data")
                    if m.size > MAX_MEMBER_BYTES:
                        big.append(m.name)
                        continue
                    entries.append(Entry(str(path), m.offset_data, m.size, m.name))
    except (tarfile.ReadError, EOFError, OSError, ValueError) as e:
        if not entries:
            warnings.warn(f"skipping {path}: not a readable tar shard ({e})", stacklevel=2)
        else:
            warnings.warn(
                f"{path} is truncated ({e}): using its first {len(entries)} complete images",
                stacklevel=2,
            )
    if big:
        warnings.warn(
            f"{path}: skipping {len(big)} members over {MAX_MEMBER_BYTES} bytes "
            f"({', '.join(big[:5])}{', ...' if len(big) > 5 else ''})",
            stacklevel=2,
        )
    return entries


def catalog(data: str) -> list[Entry]:
    """Every image of ``data``: a folder (image files and ``.tar`` shards, recursive), a
    glob, or a brace pattern (``shards/train-{0000..0099}.tar``)."""
    if data.startswith("~"):
        data = str(Path(data).expanduser())
    root = Path(data)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        files = sorted({Path(f) for p in _braces(data) for f in glob.glob(p)})
        files = [f for f in files if f.is_file()]
        if not files:
            raise FileNotFoundError(
                f"--data={data}: no such folder, and no file matches it as a pattern; "
                "give a folder of images, a folder of .tar shards, or a glob/brace pattern"
            )
    entries: list[Entry] = []
    shards = 0
    for f in files:
        if f.suffix.lower() == ".tar":
            shards += 1
            entries += shard_entries(f)
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            entries.append(Entry(str(f)))
    if not entries:
        raise ValueError(
            f"no images under --data={data} ({shards} tar shards, suffixes "
            f"{', '.join(IMAGE_SUFFIXES)}): point --data at a folder of images or shards"
        )
    return entries


# ------------------------------------------------------------------ the stream
class ImageStream(torch.utils.data.IterableDataset):
    """Batches (step, uint8 (b, S, S, 3) tensor, names of files skipped, None) of one
    rank, for steps ``start``, ``start + 1``, ... (see the module docstring for the
    order); when no image decodes, a last (step, None, skipped, message) instead of an
    exception (which a DataLoader would wrap in a worker traceback)."""

    def __init__(self, entries, size, batch, seed, start=0, rank=0, world=1):
        if batch % world:
            raise ValueError(f"batch {batch} must be a multiple of the {world} processes")
        self.entries, self.size, self.batch = entries, size, batch
        self.seed, self.start, self.rank, self.world = seed, start, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.entries), generator=gen))
        return self._perm[1]

    def image(self, n: int, bad: dict, out: np.ndarray | None = None) -> np.ndarray:
        """The image of stream position ``n``: its entry, or the next decodable one of
        the same epoch's order; unreadable entries are added to ``bad`` (name -> why)."""
        N = len(self.entries)
        order = self._order(n // N)
        for k in range(N):
            entry = self.entries[int(order[(n + k) % N])]
            if str(entry) in bad:
                continue
            try:
                return _square(entry.load(self.size), self.size, out)
            except (ImageError, OSError, ValueError) as e:
                bad[str(entry)] = str(e)
        raise ValueError(f"none of the {N} images of the training data could be decoded")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.batch // self.world
        bad: dict[str, str] = {}  # this worker's unreadable entries, name -> why
        for step in itertools.count(self.start + wid, workers):
            seen = len(bad)
            # written in place into shared memory: the batch reaches the training process
            # without a copy
            batch = torch.empty(b, self.size, self.size, 3, dtype=torch.uint8)
            if info is not None:
                batch.share_memory_()
            images = batch.numpy()
            try:
                for j, i in enumerate(range(self.rank * b, (self.rank + 1) * b)):
                    self.image(step * self.batch + i, bad, images[j])
            except ValueError as e:
                yield step, None, list(bad.items())[seen:], str(e)
                return
            yield step, batch, list(bad.items())[seen:], None


class StreamSource:
    """A folder's or shards' images through a DataLoader: ``next_batch(step)`` returns
    this rank's images of global step ``step`` (steps must come in order)."""

    def __init__(self, data, size, batch, seed, start, rank, world, workers, prefetch):
        self.entries = catalog(data)
        stream = ImageStream(self.entries, size, batch, seed, start, rank, world)
        kw = {"prefetch_factor": prefetch, "persistent_workers": False} if workers else {}
        self.loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=workers, **kw
        )
        self._it = iter(self.loader)
        self.bad: dict[str, str] = {}

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def next_batch(self, step: int) -> torch.Tensor:
        got, images, bad, error = next(self._it)
        assert got == step, f"data stream out of order: got step {got}, expected {step}"
        for name, why in bad:  # each worker reports a file once; workers may repeat it
            if name not in self.bad:
                self.bad[name] = why
                warnings.warn(f"skipping an unreadable image {name}: {why}", stacklevel=2)
        if error is not None:
            raise ValueError(f"--data: {error} (e.g. {next(iter(self.bad.values()), '?')})")
        return images

    def close(self) -> None:
        del self._it  # stops the workers


def make_source(cfg, start: int = 0, rank: int = 0, world: int = 1):
    """The training images of ``cfg`` for this rank, from global step ``start`` on."""
    if cfg.data == "toy":
        return ToySource(cfg.toy_seed, cfg.toy_pool, cfg.teacher_size)
    return StreamSource(cfg.data, cfg.teacher_size, cfg.batch, cfg.seed, start, rank, world,
                        cfg.workers, cfg.prefetch)  # fmt: skip
