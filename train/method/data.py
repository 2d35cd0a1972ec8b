"""Unlabeled training images: the toy-world generator or a folder of image files.

Both give uint8 (B, S, S, 3) RGB batches of full images (S = ``teacher_size``); the
two augmented views are cut from them in the loop (``train.method.augment``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clips4rt.images import IMAGE_SUFFIXES


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop to size x size."""
    h, w = img.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    y, x = (nh - size) // 2, (nw - size) // 2
    return img[y : y + size, x : x + size]


class ToySource:
    """``pool`` toy scenes (seed ``seed``) generated up front, sampled with replacement."""

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


class FolderSource:
    """Every image file under ``root`` (recursive). Files that fail to decode are
    skipped, counted in ``skipped`` and listed in ``bad``; they never stop training."""

    def __init__(self, root: str | Path, size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder not found: {self.root}; set --data=/path/to/images"
            )
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(
                f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {self.root}: "
                "point --data at a folder of images"
            )
        self.size = size
        self.bad: set[Path] = set()

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def _load(self, path: Path) -> np.ndarray | None:
        from clips4rt.images import load_image

        try:
            return _square(load_image(path), self.size)
        except (OSError, ValueError):
            self.bad.add(path)
            return None

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        while len(out) < n:
            if len(self.bad) == len(self.files):
                raise ValueError(
                    f"none of the {len(self.files)} files under {self.root} could be decoded"
                )
            path = self.files[int(torch.randint(len(self.files), (1,), generator=gen))]
            if path in self.bad:
                continue
            img = self._load(path)
            if img is not None:
                out.append(img)
        return torch.from_numpy(np.stack(out))


def make_source(data: str, size: int, toy_seed: int = 1000, toy_pool: int = 4000):
    return ToySource(toy_seed, toy_pool, size) if data == "toy" else FolderSource(data, size)
