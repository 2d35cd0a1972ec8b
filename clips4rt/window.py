"""Sliding-window inference, as SCLIP and ClearCLIP evaluate (``forward_slide``).

A ViT sees its pretraining grid best: instead of one pass over the whole working-size
image (positional embeddings resampled to a larger grid), square crops of ``window``
pixels run through the image graph at ``window_stride`` apart, and the overlaps are
averaged. Crop origins follow the official rule: ``ceil((n - window) / stride) + 1``
crops per axis, the last one moved back to end at the border; an axis shorter than the
window is one crop of its length.

What is averaged: the crops' unit embeddings on the token grid, not renormalised.
Cosines with a text embedding are linear in the pixel embedding, so the mean embedding
gives exactly the mean of the crops' cosines (the official code averages cosine logits),
and every post-processing path (labels, scores, threshold, background, the in-graph
matcher) takes it as it takes one pass's embeddings. The official code upsamples each
crop's logits to pixels before averaging; here the average is on tokens and the
upsampling follows, which differs only within a token of a crop's border. Window and
stride are multiples of the model's stride, so that crops fall on the token grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAX_WINDOWS = 1024  # crops per image; an error names the fix past it
MAX_BATCH = 16  # crops per graph run


def check_window(window, window_stride, model_stride: int) -> tuple[int, int] | None:
    """Validate a window setting; returns (window, stride) in pixels, or None for whole
    image (``window`` None or 0). ``window_stride`` None or 0 = half the window (rounded
    down to the model stride), the official ratio (224/112, 448/224)."""
    if window is None or (_is_int(window) and window == 0):
        if window_stride not in (None, 0):
            raise ValueError("window_stride needs a window: pass window= too, or neither")
        return None
    s = int(model_stride)
    if not (_is_int(window) and s <= window <= 8192 and window % s == 0):
        raise ValueError(
            f"window must be None (whole image) or an int in [{s}, 8192] that is a multiple "
            f"of the model's stride {s} (pixels at the working size), got {window!r}"
        )
    if window_stride in (None, 0):
        window_stride = max(s, window // 2 // s * s)
    if not (_is_int(window_stride) and s <= window_stride <= window and window_stride % s == 0):
        raise ValueError(
            f"window_stride must be an int in [{s}, window = {window}] that is a multiple of "
            f"the model's stride {s}, got {window_stride!r}"
        )
    return int(window), int(window_stride)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def origins(n: int, window: int, stride: int) -> list[int]:
    """Start of each crop along an axis of ``n`` pixels (the official rule)."""
    count = max(n - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, n) - window, 0) for i in range(count)})


def embed_windows(
    embed: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    window: int,
    stride: int,
    model_stride: int,
    batch: int = MAX_BATCH,
) -> np.ndarray:
    """Mean embeddings of the crops of a working-size image.

    Args:
        embed: the image graph: uint8 (B, h, w, 3) -> float32 (B, D, h/s, w/s).
        image: (H, W, 3) uint8, H and W multiples of ``model_stride``.
        window, stride: pixels, multiples of ``model_stride`` (``check_window``).
        batch: crops per graph run.
    Returns:
        (D, H/s, W/s) float32: per token, the mean over the crops covering it.
    """
    H, W = image.shape[:2]
    ys, xs = origins(H, window, stride), origins(W, window, stride)
    if len(ys) * len(xs) > MAX_WINDOWS:
        raise ValueError(
            f"{len(ys) * len(xs)} windows of {window} px at stride {stride} on a {W}x{H} "
            f"working size, over clips4rt.window.MAX_WINDOWS = {MAX_WINDOWS}: pass a larger "
            "window_stride or a smaller size"
        )
    ch, cw = min(window, H), min(window, W)
    s = model_stride
    boxes = [(y, x) for y in ys for x in xs]
    acc = None
    count = np.zeros((H // s, W // s), np.float32)
    for i in range(0, len(boxes), batch):
        part = boxes[i : i + batch]
        emb = embed(np.stack([image[y : y + ch, x : x + cw] for y, x in part]))
        if acc is None:
            acc = np.zeros((emb.shape[1], H // s, W // s), np.float32)
        for e, (y, x) in zip(emb, part):
            acc[:, y // s : (y + ch) // s, x // s : (x + cw) // s] += e
            count[y // s : (y + ch) // s, x // s : (x + cw) // s] += 1
    acc /= count[None]
    return acc
