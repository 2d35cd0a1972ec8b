"""Prototype matching with fused bilinear upsampling, on numpy arrays.

``match_upsample`` is the runtime's post-processing. Semantics (exact, in real
arithmetic):

- cosines ``c_k = protos[k] . emb[:, y, x]`` on the (h, w) grid;
- ``s_k`` = ``c_k`` resampled to (H, W) like ``torch.nn.functional.interpolate(
  mode="bilinear", align_corners=False)``, separably (along x, then along y, each
  as ``a + l * (b - a)``);
- per output pixel: ``labels = argmax_k s_k`` (the first index on exact ties),
  ``scores = max_k s_k`` (the winning cosine), ``probs = 1 / sum_k exp(logit_scale *
  (s_k - max))`` (softmax probability of the winner);
- background rule: ``labels = -1`` where ``labels >= n_classes`` (prototypes after
  the first ``n_classes`` are background names) or ``probs < threshold``.

The C++ kernel (``clips4rt._cpu``) computes all of it in float32 with SIMD (AVX-512,
AVX2 or a portable build, chosen at run time; see ``available_isas``), threaded,
with the GIL released, and without materialising the (K, H, W) maps.
``match_upsample_reference`` is the numpy oracle of the same semantics, in float64.
Rounding rules: the kernel's cosines carry float32 dot-product error, at most
about ``(D + 8) * 2**-24 * |p| * |e|`` (3e-5 for unit vectors at D = 512), so its labels
can differ from the oracle's only where the oracle's two best values are closer
than twice that (near-ties); scores agree to that error, and probs to about
``2 * logit_scale`` times it, relative (exp turns an absolute logit error into a
relative one), plus ~1e-6 from the float32 exp polynomial and the softmax
recurrence between source rows (see kernels/csrc/matching_simd.h).
"""

from __future__ import annotations

import numpy as np

try:  # the extension is optional: a source checkout without a build still works
    from clips4rt import _cpu  # type: ignore[attr-defined]

    HAVE_NATIVE = True
except ImportError:  # pragma: no cover - exercised when the extension is absent
    _cpu = None
    HAVE_NATIVE = False

__all__ = [
    "HAVE_NATIVE",
    "available_isas",
    "blend_labels",
    "blend_labels_reference",
    "bilinear_taps",
    "match_upsample",
    "match_upsample_reference",
    "near_tie_bound",
    "resize_rgb",
    "resize_rgb_reference",
]


def available_isas() -> list[str]:
    """Instruction sets of the C++ kernel usable here, best first ([] if not built)."""
    return list(_cpu.available_isas()) if HAVE_NATIVE else []


def near_tie_bound(emb: np.ndarray, protos: np.ndarray) -> float:
    """Largest cosine error of the float32 kernel: the gap under which its label may
    differ from the float64 oracle's ((D + 8) u |p|_max |e|_max, u = 2^-24)."""
    d = emb.shape[0]
    e = float(np.sqrt((emb.astype(np.float64) ** 2).sum(axis=0).max()))
    p = float(np.sqrt((protos.astype(np.float64) ** 2).sum(axis=1).max()))
    return (d + 8) * 2.0**-24 * e * p


def _check(
    emb: np.ndarray, protos: np.ndarray, out_size: tuple[int, int], n_classes: int | None
) -> None:
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
    if n_classes is not None and not 0 <= n_classes <= protos.shape[0]:
        raise ValueError(f"n_classes must be within [0, K = {protos.shape[0]}], got {n_classes}")


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 (int64, (n_out,)) and weight l1 (float64) of torch's
    bilinear resampling with align_corners=False: out = in[i0] + l1 * (in[i1] - in[i0])."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """``np.empty`` whose data starts on an ``align``-byte boundary (numpy only
    promises 16): the kernel writes such outputs with streaming stores."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(n + align, np.uint8)
    off = -buf.ctypes.data % align
    return buf[off : off + n].view(dtype).reshape(shape)


def match_upsample_reference(
    emb: np.ndarray,
    protos: np.ndarray,
    out_size: tuple[int, int],
    logit_scale: float,
    n_classes: int | None = None,
    threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy oracle of :func:`match_upsample` (same semantics, float64 throughout)."""
    _check(emb, protos, out_size, n_classes)
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
    probs = (1.0 / np.exp(logit_scale * (up - vmax[None])).sum(axis=0)).astype(np.float32)
    n = protos.shape[0] if n_classes is None else n_classes
    labels[(labels >= n) | (probs < threshold)] = -1
    return labels, vmax.astype(np.float32), probs


def match_upsample(
    emb: np.ndarray,
    protos: np.ndarray,
    out_size: tuple[int, int],
    logit_scale: float,
    threads: int = 0,
    native: bool | None = None,
    *,
    n_classes: int | None = None,
    threshold: float = 0.0,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    isa: str = "auto",
    labels_only: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Match pixel embeddings to prototypes at the output resolution (semantics in
    the module docstring).

    Args:
        emb: (D, h, w) float32 pixel embeddings (C order is fastest; other layouts
            are copied once).
        protos: (K, D) float32 prototypes.
        out_size: (H, W) of the result, e.g. the original image size.
        logit_scale: multiplier of the cosines inside the softmax (CLIP's, ~100).
        threads: at most this many threads of the C++ kernel (0 = all cores); small
            frames use fewer (one per ~0.5 M units of work, a thread start costs ~50 us).
        native: force (True) or forbid (False) the C++ kernel; None = use it if built.
        n_classes: prototypes ``n_classes..K-1`` are background names: pixels they
            win get label -1 (None = all K are classes).
        threshold: label -1 where the winner's probability is under it (0 = never).
        out: (labels int32, scores float32, probs float32) arrays of shape (H, W),
            C-contiguous, to write into (a video loop reuses them); None = new ones.
        isa: "auto" (the best this CPU runs) or one of :func:`available_isas`.
        labels_only: compute labels alone (no softmax: several times faster where
            the winner is decided); scores and probs are returned as None and
            ``threshold`` must be 0.

    Returns:
        labels (H, W) int32 in [-1, K), scores (H, W) float32 (winning cosine),
        probs (H, W) float32 (softmax probability of the winner).
    """
    if native is None:
        native = HAVE_NATIVE
    if labels_only and threshold > 0:
        raise ValueError("labels_only=True cannot apply a probability threshold: pass threshold=0")
    if not native:
        if out is not None:
            raise ValueError("out= needs the C++ kernel (native=True)")
        r = match_upsample_reference(emb, protos, out_size, logit_scale, n_classes, threshold)
        return (r[0], None, None) if labels_only else r
    if not HAVE_NATIVE:
        raise RuntimeError("clips4rt._cpu is not built: reinstall with `pip install -e .`")
    _check(emb, protos, out_size, n_classes)
    H, W = int(out_size[0]), int(out_size[1])
    want = (np.int32, None, None) if labels_only else (np.int32, np.float32, np.float32)
    if out is None:
        out = tuple(None if t is None else aligned_empty((H, W), t) for t in want)
    else:
        out = tuple(out)
        if len(out) != 3 or any(
            t is not None and not (isinstance(o, np.ndarray) and o.shape == (H, W) and o.dtype == t)
            for o, t in zip(out, want)
        ):
            raise ValueError(f"out must be (int32, float32, float32) arrays of shape {(H, W)}")
        out = tuple(o if t is not None else None for o, t in zip(out, want))
    _cpu.match_upsample(
        np.ascontiguousarray(emb),
        np.ascontiguousarray(protos),
        float(logit_scale),
        *out,
        int(threads),
        -1 if n_classes is None else int(n_classes),
        float(threshold),
        isa,
    )
    return out


def _pil_taps(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of Pillow's BILINEAR resampling along one axis
    (triangle filter widened by the scale when shrinking, normalised per output)."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - fs + 0.5), 0), min(max(int(center + fs + 0.5), 0), n_in)
        i = np.arange(lo, hi)
        k = np.clip(1.0 - np.abs((i - center + 0.5) / fs), 0.0, None)
        if k.sum() > 0:
            m[o, lo:hi] = k / k.sum()
    return m


def resize_rgb_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """numpy oracle of :func:`resize_rgb` (float64, one rounding half up)."""
    h, w = size
    rows = np.einsum("yY,YXc->yXc", _pil_taps(image.shape[0], h), image.astype(np.float64))
    out = np.einsum("yXc,xX->yxc", rows, _pil_taps(image.shape[1], w))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def resize_rgb(image: np.ndarray, size: tuple[int, int], threads: int = 0) -> np.ndarray:
    """Antialiased bilinear resize of an (H, W, C) uint8 image to ``size`` = (h, w).

    Pillow's ``Image.resize(..., BILINEAR)`` filter, computed separably in float32
    with one rounding: each value is within 1 of Pillow's (which rounds between
    passes) and of :func:`resize_rgb_reference`. The C++ kernel is threaded (0 = all
    cores) and several times faster than Pillow on video frames; without the
    extension this falls back to Pillow.
    """
    h, w = int(size[0]), int(size[1])
    if image.ndim != 3 or image.dtype != np.uint8 or min(h, w, *image.shape) < 1:
        raise ValueError(f"need an (H, W, C) uint8 image and size >= 1, got {image.shape}, {size}")
    if image.shape[:2] == (h, w):
        return image
    if not HAVE_NATIVE:  # pragma: no cover - exercised when the extension is absent
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    out = np.empty((h, w, image.shape[2]), np.uint8)
    _cpu.resize_bilinear(np.ascontiguousarray(image), out, int(threads))
    return out


def blend_labels_reference(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float
) -> np.ndarray:
    """numpy oracle of :func:`blend_labels`."""
    a = int(round(alpha * 256))
    k = labels.astype(np.int64)
    fg = (k >= 0) & (k < len(colours))
    col = colours[np.where(fg, k, 0)].astype(np.uint32)
    mixed = (image.astype(np.uint32) * (256 - a) + col * a + 128) >> 8
    return np.where(fg[..., None], mixed, image).astype(np.uint8)


def blend_labels(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float, threads: int = 0
) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` with ``colours[labels]`` blended in at ``alpha``
    (fixed point, 1/256 steps, rounded) where labels index a colour; elsewhere the
    image unchanged. One pass in C++ (the float numpy version took ~90 ms at 720p)."""
    if not (image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    colours = np.ascontiguousarray(colours, np.uint8).reshape(-1, 3)
    if not HAVE_NATIVE:  # pragma: no cover - exercised when the extension is absent
        return blend_labels_reference(image, labels, colours, alpha)
    out = np.empty_like(image)
    _cpu.blend_labels(
        np.ascontiguousarray(image),
        np.ascontiguousarray(labels, np.int32),
        colours,
        int(round(alpha * 256)),
        out,
        int(threads),
    )
    return out
