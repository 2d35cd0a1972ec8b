"""Read a VOC-style segmentation folder (what ``train.toyworld`` writes, and real data).

DIR/JPEGImages/<id>.jpg|png        images
DIR/SegmentationClass/<id>.png     masks: index = class id, 255 = ignore
DIR/classes.txt                    one class name a line, in id order
DIR/ImageSets/Segmentation/*.txt   optional id list (else every image in JPEGImages)
DIR/split.json                     optional {"known": [...], "unknown": [...]}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from clips4rt.images import IMAGE_SUFFIXES


class VOCFolder:
    def __init__(self, root: str | Path, image_set: str | None = None, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root}")
        cls_file = self.root / "classes.txt"
        if not cls_file.is_file():
            raise ValueError(f"{cls_file} is missing: list the class names, one a line")
        self.classes = [c.strip() for c in cls_file.read_text().splitlines() if c.strip()]
        if not self.classes:
            raise ValueError(f"{cls_file} lists no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{cls_file} lists a class twice")
        img_dir = self.root / "JPEGImages"
        if image_set is not None:
            ids_file = self.root / "ImageSets" / "Segmentation" / f"{image_set}.txt"
            if not ids_file.is_file():
                raise FileNotFoundError(f"image set not found: {ids_file}")
            ids = [i.strip() for i in ids_file.read_text().splitlines() if i.strip()]
            self.images = [self._find(img_dir, i) for i in ids]
        else:
            self.images = sorted(p for p in img_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit is not None:
            self.images = self.images[:limit]
        if not self.images:
            raise ValueError(f"no images in {img_dir}: expected JPEGImages/<id>.jpg files")
        split = self.root / "split.json"
        self.split = json.loads(split.read_text()) if split.is_file() else {}

    @staticmethod
    def _find(img_dir: Path, image_id: str) -> Path:
        for ext in IMAGE_SUFFIXES:
            if (img_dir / f"{image_id}{ext}").is_file():
                return img_dir / f"{image_id}{ext}"
        raise FileNotFoundError(f"image {image_id} listed but not found in {img_dir}")

    def __len__(self) -> int:
        return len(self.images)

    def mask_path(self, image: Path) -> Path:
        return self.root / "SegmentationClass" / f"{image.stem}.png"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8 RGB, mask HxW uint8) of item i, checked."""
        from clips4rt.images import load_image

        path = self.images[i]
        mpath = self.mask_path(path)
        if not mpath.is_file():
            raise FileNotFoundError(f"mask missing for {path.name}: expected {mpath}")
        image = load_image(path)
        with Image.open(mpath) as m:
            if m.mode not in ("P", "L"):
                raise ValueError(
                    f"{mpath}: mask must be a palette or grayscale PNG of class "
                    f"ids, got mode {m.mode}"
                )
            mask = np.asarray(m)
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{mpath}: mask is {mask.shape[::-1]} but image {path.name} is "
                f"{image.shape[1::-1]} (width x height)"
            )
        bad = np.unique(mask[(mask != 255) & (mask >= len(self.classes))])
        if bad.size:
            raise ValueError(
                f"{mpath}: labels {bad.tolist()} are outside classes.txt "
                f"({len(self.classes)} classes) and are not 255"
            )
        return image, mask
