"""Class-free segments: ``Segmenter.discover(image)`` - what regions are in this image,
without names; optionally each named by its nearest entries of a vocabulary.

The method (numpy only):

1. the pixel embeddings of the image, as ``run`` computes them (``embed_image``: the
   working size, windows as the bundle says), one unit vector per grid cell;
2. spherical k-means on those vectors (cosine; k-means++ seeding from a fixed seed, at
   most 30 Lloyd steps), for each k in [2, ``max_k``] when ``k`` is None;
3. the rule for k: the **largest mean silhouette** (cosine distance) over the grid cells,
   ties to the smaller k; an image whose best silhouette is under ``min_silhouette``
   (0.05), or whose vectors all lie within a mean cosine distance of 0.1 of their mean
   (the silhouette is blind to scale: it splits pure noise), is one segment;
4. full-resolution labels by the same kernel ``run`` uses (bilinear upsampling of the
   cosines to the segment centroids, arg max), so segments follow the same boundaries;
5. with a ``vocabulary``: each segment's centroid (the unit mean of its vectors) against
   the vocabulary's text prototypes; the ``top`` names by cosine, with the bundle's
   absolute score sigmoid(scale * cosine + bias) where it is calibrated (``python -m
   train.export.calibrate``), else None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_K = 12
MIN_SILHOUETTE = 0.05
# mean cosine distance to the image's mean embedding under which the image is one region:
# the embedded student gives 0.06 on plain grey or blue images, 0.18-0.49 on toy scenes
MIN_SPREAD = 0.1
ITERATIONS = 30


@dataclass
class Segment:
    id: int
    share: float  # fraction of the image's pixels
    names: list[tuple[str, float, float | None]] = field(default_factory=list)
    # (name, cosine, absolute score or None), best first; empty without a vocabulary

    @property
    def name(self) -> str:
        return self.names[0][0] if self.names else f"segment {self.id}"


@dataclass
class Discovery:
    labels: np.ndarray  # (H, W) int32 segment ids 0..k-1
    segments: list[Segment]
    centroids: np.ndarray  # (k, D) unit vectors
    silhouette: float  # mean silhouette of the chosen k (nan for k = 1)
    image: np.ndarray

    @property
    def k(self) -> int:
        return len(self.segments)

    def mask(self, i: int) -> np.ndarray:
        return self.labels == i

    def overlay(self, alpha: float = 0.5, scale: int = 1):
        """The image with segment colours and a legend of their names (PIL RGB)."""
        from clips4rt.visualize import overlay

        names, seen = [], {}
        for s in self.segments:  # a legend name per segment, repeats numbered
            seen[s.name] = seen.get(s.name, 0) + 1
            names.append(s.name if seen[s.name] == 1 else f"{s.name} ({seen[s.name]})")
        return overlay(self.image, self.labels, names, alpha, scale)

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "silhouette": None if np.isnan(self.silhouette) else round(self.silhouette, 4),
            "segments": [{"id": s.id, "share": round(s.share, 6), "names": [
                {"name": n, "cosine": round(c, 4), "score": None if p is None else round(p, 4)}
                for n, c, p in s.names]} for s in self.segments],
        }  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = ITERATIONS) -> np.ndarray:
    """Spherical k-means of unit rows ``x`` (N, D): (N,) cluster ids, k-means++ seeding."""
    rng = np.random.default_rng(seed)
    n = len(x)
    centres = [x[rng.integers(n)]]
    dist = 1.0 - x @ centres[0]
    for _ in range(1, k):
        p = np.maximum(dist, 0) ** 2
        total = p.sum()
        i = rng.choice(n, p=p / total) if total > 0 else rng.integers(n)
        centres.append(x[i])
        dist = np.minimum(dist, 1.0 - x @ x[i])
    c = np.stack(centres)
    ids = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, ids):
            break
        ids = new
        for j in range(k):
            members = x[ids == j]
            if len(members):
                c[j] = _unit(members.sum(0))
    return ids


def silhouette(x: np.ndarray, ids: np.ndarray, d: np.ndarray | None = None) -> float:
    """Mean silhouette of the clustering ``ids`` of unit rows ``x`` (cosine distance;
    ``d``: the (N, N) distances, when already at hand)."""
    labels = np.unique(ids)
    if len(labels) < 2:
        return float("nan")
    if d is None:
        d = 1.0 - x @ x.T  # (N, N)
    onehot = (ids[:, None] == labels[None, :]).astype(d.dtype)
    sums = d @ onehot  # each point's summed distance to each cluster
    sizes = onehot.sum(0)
    own = np.searchsorted(labels, ids)
    n_own = sizes[own]
    a = np.where(n_own > 1, sums[np.arange(len(x)), own] / np.maximum(n_own - 1, 1), 0.0)
    mean_to = sums / sizes[None, :]
    mean_to[np.arange(len(x)), own] = np.inf
    b = mean_to.min(1)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(x: np.ndarray, max_k: int, seed: int, min_silhouette: float):
    """(ids, silhouette) of the k in [2, max_k] with the best mean silhouette (ties: the
    smaller k); one cluster when even the best is under ``min_silhouette``."""
    best = (np.zeros(len(x), np.int64), float("nan"))
    if float(np.mean(1.0 - x @ _unit(x.sum(0)))) < MIN_SPREAD:  # one tight cone: one region
        return best
    d = 1.0 - (x32 := x.astype(np.float32)) @ x32.T  # once for every k
    for k in range(2, min(max_k, len(x) - 1) + 1):
        ids = kmeans(x, k, seed)
        s = silhouette(x, ids, d)
        if not np.isnan(s) and (np.isnan(best[1]) or s > best[1] + 1e-9):
            best = (ids, s)
    if np.isnan(best[1]) or best[1] < min_silhouette:
        return np.zeros(len(x), np.int64), float("nan")
    return best


def discover(segmenter, image, k: int | None = None, vocabulary=None, *, max_k: int = MAX_K,
             top: int = 3, seed: int = 0, min_silhouette: float = MIN_SILHOUETTE,
             size=None, window="default", window_stride=None) -> Discovery:  # fmt: skip
    """See the module docstring; ``Segmenter.discover`` calls this."""
    from clips4rt.images import load_image
    from clips4rt.kernels import match_upsample

    if k is not None and not (isinstance(k, int) and 1 <= k <= 64):
        raise ValueError(f"k must be an int in [1, 64] or None (chosen), got {k!r}")
    if not (isinstance(max_k, int) and 2 <= max_k <= 64):
        raise ValueError(f"max_k must be an int in [2, 64], got {max_k!r}")
    if not (isinstance(top, int) and top >= 1):
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    image = load_image(image, segmenter.max_pixels)
    emb = segmenter.embed_image(image, size, window, window_stride)  # (D, h, w)
    d, h, w = emb.shape
    x = _unit(emb.reshape(d, h * w).T.astype(np.float64))
    if k is None:
        ids, sil = choose_k(x, max_k, seed, min_silhouette)
    else:
        ids = kmeans(x, min(k, len(x)), seed)
        sil = silhouette(x, ids)
    used = np.unique(ids)  # empty clusters dropped
    centroids = np.stack([_unit(x[ids == j].sum(0)) for j in used]).astype(np.float32)
    labels, _, _ = match_upsample(np.ascontiguousarray(emb, np.float32), centroids,
                                  image.shape[:2], 1.0, threads=segmenter.post_threads,
                                  labels_only=True)  # fmt: skip
    counts = np.bincount(labels.ravel(), minlength=len(centroids))
    order = np.argsort(-counts, kind="stable")  # segment 0 the largest, at full size
    labels = np.argsort(order).astype(np.int32)[labels]
    keep = int((counts > 0).sum())  # a cluster that no pixel picks once upsampled goes
    centroids, counts = centroids[order][:keep], counts[order][:keep]
    segments = [Segment(i, float(counts[i]) / labels.size) for i in range(len(centroids))]
    if vocabulary is not None:
        names = list(vocabulary)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError("vocabulary must be a non-empty list of names")
        protos = segmenter.text_embeddings(names)
        cos = centroids.astype(np.float64) @ protos.T.astype(np.float64)  # (k, V)
        a, b = segmenter.info.score_scale, segmenter.info.score_bias
        for s, row in zip(segments, cos):
            best = np.argsort(-row, kind="stable")[:top]
            s.names = [(names[j], float(row[j]),
                        float(1 / (1 + np.exp(-(a * row[j] + b)))) if a else None)
                       for j in best]  # fmt: skip
    return Discovery(labels, segments, centroids, sil, image)


def write_folder(segmenter, inputs, out, k=None, vocabulary=None, **options) -> int:
    """``clips4rt segment --discover``: for each ``(image, stem)`` of ``inputs``
    (``clips4rt.inputs.expand``), ``<stem>_segments.png`` (index = segment, largest
    first), ``<stem>_overlay.png`` and ``<stem>_segments.json`` (``Discovery.to_dict``)
    under ``out``, written atomically, and a line on stdout; an unreadable image is
    skipped with its reason on stderr. Returns the number skipped."""
    import json
    import sys

    from clips4rt.errors import ImageError
    from clips4rt.files import save_image_atomic, write_atomic
    from clips4rt.visualize import label_png

    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for image, stem in inputs:
        try:
            d = discover(segmenter, image, k, vocabulary, **options)
        except (ImageError, FileNotFoundError) as e:
            print(f"skipped {image}: {e}", file=sys.stderr)
            failed += 1
            continue
        (out / stem).parent.mkdir(parents=True, exist_ok=True)
        save_image_atomic(label_png(d.labels, d.k), out / f"{stem}_segments.png")
        save_image_atomic(d.overlay(), out / f"{stem}_overlay.png")
        write_atomic(out / f"{stem}_segments.json", json.dumps(d.to_dict(), indent=1).encode())
        parts = ", ".join(f"{s.name} {100 * s.share:.1f}%" for s in d.segments)
        print(f"{image}: {d.k} segments: {parts} -> {out / f'{stem}_overlay.png'}")
    return failed
