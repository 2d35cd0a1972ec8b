"""Prototype matching with fused bilinear upsampling, on numpy arrays.

``match_upsample`` is the runtime's post-processing: cosine of every pixel
embedding with every class prototype, bilinear resampling of the K score maps to
the output size (``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` semantics), then per output pixel the winning index, its
score and its softmax probability at ``logit_scale``.

The C++ kernel (``kernels._cpu``, multithreaded, GIL released) is used when built;
``match_upsample_reference`` is the numpy oracle. Both compute cosines and the
interpolation in float64, so they give identical labels (up to exact ties).
"""

from __future__ import annotations

import numpy as np

try:  # the extension is optional: a source checkout without a build still works
    from kernels import _cpu  # type: ignore[attr-defined]

    HAVE_NATIVE = True
except ImportError:  # pragma: no cover - exercised when the extension is absent
    _cpu = None
    HAVE_NATIVE = False

__all__ = ["HAVE_NATIVE", "match_upsample", "match_upsample_reference", "bilinear_taps"]


def _check(emb: np.ndarray, protos: np.ndarray, out_size: tuple[int, int]) -> None:
    for name, a, nd in (("emb", emb, 3), ("protos", protos, 2)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}: use .astype(np.float32)")
        if a.ndim != nd:
            raise ValueError(f"{name} must have {nd} dimensions, got shape {a.shape}")
    if protos.shape[1] != emb.shape[0]:
        raise ValueError(
            f"protos is (K, D) = {protos.shape} but emb is (D, h, w) = {emb.shape}: D differs"
        )
    if min(emb.shape) < 1 or protos.shape[0] < 1:
        raise ValueError(f"empty input: emb {emb.shape}, protos {protos.shape}")
    if len(out_size) != 2 or min(out_size) < 1:
        raise ValueError(f"out_size must be (H, W) with H, W >= 1, got {out_size}")


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 (int64, (n_out,)) and weight l1 (float64) of torch's
    bilinear resampling with align_corners=False: out = in[i0] + l1 * (in[i1] - in[i0])."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def match_upsample_reference(
    emb: np.ndarray, protos: np.ndarray, out_size: tuple[int, int], logit_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy oracle of :func:`match_upsample` (same arguments and results)."""
    _check(emb, protos, out_size)
    d, h, w = emb.shape
    cos = protos.astype(np.float64) @ emb.reshape(d, h * w).astype(np.float64)
    if not np.isfinite(cos).all():
        raise ValueError("embeddings or prototypes contain NaN or inf")
    cos = cos.reshape(-1, h, w)
    y0, y1, ly = bilinear_taps(h, out_size[0])
    x0, x1, lx = bilinear_taps(w, out_size[1])
    a, b = cos[:, y0, :], cos[:, y1, :]
    rows = a + ly[None, :, None] * (b - a)  # (K, H, w)
    a, b = rows[:, :, x0], rows[:, :, x1]
    up = a + lx[None, None, :] * (b - a)  # (K, H, W)
    labels = up.argmax(axis=0).astype(np.int32)
    vmax = np.take_along_axis(up, labels[None].astype(np.int64), axis=0)[0]
    denom = np.exp(logit_scale * (up - vmax[None])).sum(axis=0)
    return labels, vmax.astype(np.float32), (1.0 / denom).astype(np.float32)


def match_upsample(
    emb: np.ndarray,
    protos: np.ndarray,
    out_size: tuple[int, int],
    logit_scale: float,
    threads: int = 0,
    native: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match pixel embeddings to prototypes at the output resolution.

    Args:
        emb: (D, h, w) float32 pixel embeddings (unit length along D).
        protos: (K, D) float32 prototypes (unit length).
        out_size: (H, W) of the result, e.g. the original image size.
        logit_scale: multiplier of the cosines inside the softmax (CLIP's, ~100).
        threads: worker threads of the C++ kernel, 0 = all cores.
        native: force (True) or forbid (False) the C++ kernel; None = use it if built.

    Returns:
        labels (H, W) int32 in [0, K), scores (H, W) float32 (winning cosine),
        probs (H, W) float32 (softmax probability of the winner).
    """
    if native is None:
        native = HAVE_NATIVE
    if not native:
        return match_upsample_reference(emb, protos, out_size, logit_scale)
    if not HAVE_NATIVE:
        raise RuntimeError("kernels._cpu is not built: reinstall with `pip install -e .`")
    _check(emb, protos, out_size)
    H, W = int(out_size[0]), int(out_size[1])
    labels = np.empty((H, W), np.int32)
    scores = np.empty((H, W), np.float32)
    probs = np.empty((H, W), np.float32)
    _cpu.match_upsample(
        np.ascontiguousarray(emb),
        np.ascontiguousarray(protos),
        float(logit_scale),
        labels,
        scores,
        probs,
        int(threads),
    )
    return labels, scores, probs
