"""Colour palette, label PNGs and overlays with a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, PASCAL VOC's bit-interleaved scheme (index 0 = black
    is skipped so every class is visible)."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def label_png(labels: np.ndarray, n_classes: int) -> Image.Image:
    """A palette PNG of (H, W) int32 labels: index k = class k, 255 = background (-1).
    Above 255 classes a 16-bit grayscale PNG: value k = class k, 65535 = background."""
    if n_classes > 255:
        if n_classes > 65535:
            raise ValueError("label PNGs hold at most 65535 classes")
        return Image.fromarray(np.where(labels < 0, 65535, labels).astype(np.uint16))
    idx = np.where(labels < 0, 255, labels).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[:n_classes] = palette(n_classes)
    img.putpalette(pal.reshape(-1).tolist())
    return img


def overlay(
    image: np.ndarray, labels: np.ndarray, classes: list[str], alpha: float = 0.5, scale: int = 1
):
    """Blend class colours over an HxWx3 uint8 image and draw a legend of the
    classes present (background pixels stay as they are). ``scale`` enlarges the
    result by an integer factor (nearest) so a legend fits on small images.
    Returns a PIL RGB image of (W * scale, H * scale)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
        labels = labels.repeat(scale, axis=0).repeat(scale, axis=1)
    from kernels.cpu import blend_labels

    colours = palette(len(classes))
    img = Image.fromarray(blend_labels(image, labels, colours, alpha))
    counts = np.bincount(labels.ravel() + 1, minlength=len(classes) + 1)[1:]
    present = [k for k in range(len(classes)) if counts[k]]
    if not present:
        return img
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    row = max(12, draw.textbbox((0, 0), "Ag", font=font)[3] + 4)
    width = max(draw.textlength(classes[k], font=font) for k in present) + row + 8
    draw.rectangle([0, 0, width, row * len(present) + 4], fill=(0, 0, 0))
    for i, k in enumerate(present):
        y = 2 + i * row
        draw.rectangle([4, y + 2, row, y + row - 2], fill=tuple(int(c) for c in colours[k]))
        draw.text((row + 4, y), classes[k], fill=(255, 255, 255), font=font)
    return img
