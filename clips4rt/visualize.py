"""Colour palette, label PNGs and overlays with a legend."""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

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


# Fonts with wide Unicode coverage, first found wins (none is shipped: the package
# stays small); else Pillow's built-in scalable font (Latin only).
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "C:/Windows/Fonts/seguisym.ttf",
    "C:/Windows/Fonts/arial.ttf",
)


@lru_cache(maxsize=16)
def legend_font(size: int):
    """A scalable font of ``size`` px (see FONT_CANDIDATES)."""
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=4096)
def _has_glyph(font, ch: str) -> bool:
    if ch.isspace():
        return True
    try:
        missing = font.getmask("\U0010fffd").tobytes()
        return font.getmask(ch).tobytes() != missing
    except Exception:  # noqa: BLE001 - a bitmap font: assume ASCII only
        return ch.isascii()


def drawable(text: str, font) -> str:
    """``text`` with the characters ``font`` has no glyph for as '?' (and a warning),
    never as silent boxes."""
    out = "".join(ch if _has_glyph(font, ch) else "?" for ch in text)
    if out != text:
        warnings.warn(
            f"the legend font has no glyph for some characters of {text!r}; drawn as '?' "
            "(install DejaVu Sans or Noto Sans for wider coverage)",
            UserWarning,
            stacklevel=3,
        )
    return out


def overlay(
    image: np.ndarray, labels: np.ndarray, classes: list[str], alpha: float = 0.5, scale: int = 1
):
    """Blend class colours over an HxWx3 uint8 image and draw a legend of the
    classes present, largest first (background pixels stay as they are). The legend
    scales with the image (text ~1/45 of its short side, at least 11 px), wraps into
    columns, and ends with "+N more" when even those do not fit. ``scale`` enlarges
    the result by an integer factor (nearest) so a legend fits on small images.
    Returns a PIL RGB image of (W * scale, H * scale)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
        labels = labels.repeat(scale, axis=0).repeat(scale, axis=1)
    from clips4rt.kernels import blend_labels

    colours = palette(len(classes))
    img = Image.fromarray(blend_labels(image, labels, colours, alpha))
    counts = np.bincount(labels.ravel() + 1, minlength=len(classes) + 1)[1:]
    present = sorted((k for k in range(len(classes)) if counts[k]), key=lambda k: -counts[k])
    if not present:
        return img
    H, W = img.height, img.width
    size = max(11, round(min(H, W) / 45))
    font = legend_font(size)
    draw = ImageDraw.Draw(img)
    row = max(size + 4, draw.textbbox((0, 0), "Ag", font=font)[3] + 4)
    pad = max(2, row // 6)
    names = [drawable(classes[k], font) for k in present]
    per_col = max(1, (H - 2 * pad) // row)
    cols = [list(range(i, min(i + per_col, len(present)))) for i in range(0, len(present), per_col)]
    widths = [
        int(max(draw.textlength(names[i], font=font) for i in c)) + row + 3 * pad for c in cols
    ]
    shown, x = [], 0
    for col, width in zip(cols[:4], widths):  # at most 4 columns, and what fits across
        if shown and x + width > W:
            break
        shown.append(col)
        x += width
    more = len(present) - sum(len(c) for c in shown)
    if more:  # the last line says how many classes are not listed
        more += 1
        shown[-1][-1] = -1
    x = 0
    for col in shown:
        texts = [names[i] if i >= 0 else f"+{more} more" for i in col]
        width = int(max(draw.textlength(t, font=font) for t in texts)) + row + 3 * pad
        draw.rectangle([x, 0, x + width, row * len(col) + 2 * pad], fill=(0, 0, 0))
        for j, (i, t) in enumerate(zip(col, texts)):
            y = pad + j * row
            if i >= 0:
                c = tuple(int(v) for v in colours[present[i]])
                draw.rectangle([x + pad, y + pad, x + row - pad, y + row - pad], fill=c)
            draw.text((x + row + pad, y + (row - size) // 2 - 1), t, fill=(255, 255, 255),
                      font=font)  # fmt: skip
        x += width
    return img


def png_level(img: Image.Image) -> int:
    """The PNG compression level files are written with: 1 for colour images (a 640x480
    overlay: 20 ms instead of 108 ms at Pillow's default 6, files ~16 % larger; a
    4000x3000 one: ~0.9 s instead of ~2.9 s) and for anything over 1 MP; 6 for small
    palette and grayscale images (label PNGs: ~2 ms at 640x480, and they compress well)."""
    small = img.width * img.height <= 1 << 20
    return 6 if small and img.mode in ("P", "L", "1", "I;16", "I") else 1


def save_image(img: Image.Image, path) -> None:
    """Save with settings chosen for speed: PNG at :func:`png_level`, JPEG quality 90."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".png":
        img.save(path, compress_level=png_level(img))
    elif ext in (".jpg", ".jpeg"):
        img.save(path, quality=90)
    else:
        img.save(path)
