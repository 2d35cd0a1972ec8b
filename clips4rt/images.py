"""Image input: file path, PIL image or numpy array -> HxWx3 uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clips4rt.errors import ImageError

EXPECTED = (
    "an image file path, a PIL image, or a numpy array HxWx3 uint8 RGB "
    "(HxW or HxWx1 uint8 is read as grayscale)"
)


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 of 16 bits
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
        a = np.clip(np.nan_to_num(a) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # composite transparency over white, as viewers show it
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"))
    raise ImageError(f"{name}: unsupported PIL mode {mode!r}; expected {EXPECTED}")


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ImageError(
            f"numpy image has dtype {a.dtype}, expected uint8 HxWx3 RGB. For floats in "
            "[0, 1] use (img * 255).round().astype(np.uint8)."
        )
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        a = a.reshape(a.shape[0], a.shape[1])
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3:
        raise ImageError(f"numpy image has shape {a.shape}, expected HxWx3 uint8 RGB")
    if a.shape[2] != 3:
        fix = " Drop alpha with img[..., :3]." if a.shape[2] == 4 else ""
        raise ImageError(
            f"numpy image has {a.shape[2]} channels (shape {a.shape}), expected HxWx3 "
            f"uint8 RGB.{fix}"
        )
    return np.ascontiguousarray(a)


def load_image(image) -> np.ndarray:
    """Read an image into an HxWx3 uint8 RGB array (EXIF orientation applied).

    Accepts a file path (any format PIL reads; grayscale, palette, RGBA/LA,
    16-bit and CMYK are converted), a PIL image, or a numpy uint8 array HxWx3
    (HxW / HxWx1 = grayscale). Raises ImageError (or FileNotFoundError) otherwise.
    """
    if isinstance(image, np.ndarray):
        out = _from_array(image)
    elif isinstance(image, Image.Image):
        out = _from_pil(image, "PIL image")
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()
                out = _from_pil(img, str(path))
        except UnidentifiedImageError as e:
            raise ImageError(f"{path}: not an image file PIL can read") from e
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, ImageError):
                raise
            raise ImageError(f"{path}: cannot decode image ({e}); is it truncated?") from e
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; expected {EXPECTED}")
    if out.shape[0] < 1 or out.shape[1] < 1:
        raise ImageError(f"image is empty (shape {out.shape})")
    return out
