"""Image input: file path, PIL image or numpy array -> HxWx3 uint8 RGB."""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clips4rt.errors import ImageError

# Largest image (width x height) read or segmented, checked before decoding: PIL's own
# decompression-bomb limit by default. Raise it for huge scans (``clips4rt.images.
# MAX_PIXELS = ...``, or ``load_image(..., max_pixels=)``); None = no limit.
MAX_PIXELS: int | None = Image.MAX_IMAGE_PIXELS

EXPECTED = (
    "an image file path, a PIL image, or a numpy array HxWx3 uint8 RGB "
    "(HxW or HxWx1 uint8 is read as grayscale)"
)


# The file formats read (Pillow names). Others (EPS hands the file to Ghostscript,
# PDF, ...) are refused: a file from elsewhere must not pick the decoder that runs.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "TGA")  # JPEG opens MPO too
#: file name suffixes of those formats: what a folder of images is scanned for (the CLI,
#: training folders, evaluation folders)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm",
                  ".pgm", ".tga", ".mpo")  # fmt: skip


def _scale_gray(a: np.ndarray, name: str, depth16: bool) -> np.ndarray:
    """Integer or float grayscale to uint8 HxWx3, by the rule in load_image's docstring."""
    if not np.isfinite(a).all():
        raise ImageError(f"{name}: float image with NaN or infinite pixels")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if depth16:  # a 16-bit container: its full range
        a = a / 257.0
    elif lo >= 0 and hi <= 1.0 and a.dtype.kind == "f":
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:  # any other range: its own minimum .. maximum
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    a = np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2)


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _scale_gray(np.asarray(img, dtype=np.float64), name, depth16=True)
    if mode in ("I", "F"):
        return _scale_gray(np.asarray(img, dtype=np.float64), name, depth16=False)
    if mode == "La":  # premultiplied alpha: Pillow converts it only through LA
        img, mode = img.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        # composite transparency over white, as viewers show it
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"))
    raise ImageError(f"{name}: unsupported PIL mode {mode!r}; expected {EXPECTED}")


def _pil_checked(img: Image.Image, name: str) -> np.ndarray:
    try:
        return _from_pil(img, name)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(f"{name}: cannot convert ({type(e).__name__}: {e})") from e


def _from_array(a: np.ndarray) -> np.ndarray:
    # the same content is read the same way as from a file: 16-bit by /257, a 2-D float
    # or int32 image as PIL's mode F / I, RGBA and gray+alpha composited over white
    if a.dtype == np.uint16 and a.ndim in (2, 3):
        a = np.clip(np.floor(a / 257.0 + 0.5), 0, 255).astype(np.uint8)
    elif a.ndim == 2 and a.dtype in (np.float32, np.float64, np.int32) and a.size:
        return _scale_gray(a.astype(np.float64), "numpy image", depth16=False)
    if a.dtype != np.uint8:
        raise ImageError(
            f"numpy image has dtype {a.dtype}, expected uint8 HxWx3 RGB (uint16, and 2-D "
            "float32 / int32 grayscale, are read as their files are). For RGB floats in "
            "[0, 1] use (img * 255).round().astype(np.uint8)."
        )
    if a.ndim == 3 and a.shape[2] in (2, 4) and a.shape[0] and a.shape[1]:
        return _from_pil(Image.fromarray(np.ascontiguousarray(a)), "numpy image")  # LA, RGBA
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


def _check_pixels(w: int, h: int, name: str, max_pixels: int | None) -> None:
    if w < 1 or h < 1:
        raise ImageError(f"{name} is empty ({w}x{h} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(a decompression bomb guard). If the image is genuine, raise the limit: "
            "clips4rt.images.MAX_PIXELS = N, load_image(..., max_pixels=N) or "
            "Segmenter(..., max_pixels=N)."
        )


# deflate cannot compress more than 1032:1, so a PNG whose IDAT chunks are smaller
# than its raw pixel rows / 1032 cannot hold them all: PIL would fill the missing
# rows with zeros without a word
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_too_short(path) -> str | None:
    """Why the PNG at ``path`` (or in a seekable binary file) cannot hold all of its rows
    (None = it can)."""
    with open(path, "rb") if isinstance(path, (str, os.PathLike)) else _rewound(path) as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        idat = 0
        w = h = bits = ctype = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            n, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR" and n >= 13:
                w, h, bits, ctype = struct.unpack(">IIBB", f.read(10))
                f.seek(n - 10 + 4, 1)
                continue
            if kind == b"IDAT":
                idat += n
            if kind == b"IEND":
                break
            f.seek(n + 4, 1)
    if w is None or ctype not in _PNG_CHANNELS:
        return None
    raw = h * (1 + (w * _PNG_CHANNELS[ctype] * bits + 7) // 8)
    if idat * 1032 + 1024 < raw:
        return f"its pixel data ({idat} bytes) cannot hold {w}x{h} pixels ({raw} bytes raw)"
    return None


class _rewound:
    """Context manager: a binary file object seeked to its start, left open after."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        self.f.seek(0)
        return self.f

    def __exit__(self, *exc):
        self.f.seek(0)


def load_image(
    image, max_pixels: int | None | str = "default", min_side: int | None = None
) -> np.ndarray:
    """Read an image into an HxWx3 uint8 RGB array (EXIF orientation applied).

    Accepts a file path, an http(s) URL (fetched within ``clips4rt.net``'s size and
    time bounds) or the bytes of an image file (any format PIL reads;
    grayscale, palette, RGBA/LA, 16-bit and CMYK are converted), a PIL image, or a
    numpy uint8 array HxWx3 (HxW / HxWx1 = grayscale). Raises ImageError (or
    FileNotFoundError) otherwise: also for images over ``max_pixels`` (default
    :data:`MAX_PIXELS`, PIL's decompression-bomb limit; checked before decoding) and
    for truncated files.

    ``min_side``: a caller that will shrink the image anyway may let JPEGs decode at a
    reduced scale (1/2, 1/4 or 1/8, PIL's draft mode) whose short side is still at
    least ``min_side``: several times faster for photos much larger than needed.

    Formats: :data:`FORMATS` (PNG, JPEG/MPO, WebP, BMP, GIF, TIFF, PPM/PGM, TGA).
    Grayscale of more than 8 bits becomes 8-bit by its range: 16-bit modes by
    their full range (/257); 32-bit integer and float images by the range their
    values use: [0, 1] floats x255, [0, 255] as is, [0, 65535] /257, anything else
    its own min..max; NaN or infinite pixels are an ImageError.
    """
    limit = MAX_PIXELS if max_pixels == "default" else max_pixels
    if isinstance(image, np.ndarray):
        if image.ndim in (2, 3):
            _check_pixels(image.shape[1], image.shape[0], "numpy image", limit)
        out = _from_array(image)
    elif isinstance(image, Image.Image):
        _check_pixels(*image.size, "PIL image", limit)
        out = _pil_checked(image, "PIL image")
    elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(image, str) and image[:8].lower().startswith(("http://", "https://")):
            from clips4rt.net import fetch

            path, src = image, io.BytesIO(fetch(image))
        elif isinstance(image, (str, os.PathLike)):
            path = src = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {path}")
        else:
            path, src = "image bytes", io.BytesIO(image)
        try:
            with Image.open(src, formats=FORMATS) as img:  # reads the header only
                _check_pixels(*img.size, str(path), limit)
                if img.format == "PNG":
                    why = _png_too_short(src)
                    if why:
                        raise ImageError(f"{path}: truncated PNG: {why}")
                if min_side is not None and img.format == "JPEG":
                    scale = min_side / min(img.size)
                    if scale < 1:
                        img.draft("RGB", tuple(math.ceil(n * scale) for n in img.size))
                img.load()
                out = _pil_checked(img, str(path))
        except ImageError:
            raise
        except Image.DecompressionBombError as e:  # over twice PIL's own limit
            raise ImageError(
                f"{path}: {e} To read it anyway (a genuine image), raise both "
                "PIL.Image.MAX_IMAGE_PIXELS and clips4rt.images.MAX_PIXELS."
            ) from None
        except UnidentifiedImageError as e:
            raise ImageError(
                f"{path}: not an image file of a supported format ({', '.join(FORMATS)})"
            ) from e
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as e:
            raise ImageError(
                f"{path}: cannot decode image ({type(e).__name__}: {e}); is it truncated?"
            ) from e
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; expected {EXPECTED}")
    if out.shape[0] < 1 or out.shape[1] < 1:
        raise ImageError(f"image is empty (shape {out.shape})")
    return out
