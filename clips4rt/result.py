"""SegmentationResult: labels now, probabilities and cosines when first asked for."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

Finish = Callable[[], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


class SegmentationResult:
    """Result of :meth:`Segmenter.run` for one image.

    labels: (H, W) int32 at the input's original size, index into ``classes``,
        -1 where the background rule applies.
    scores: (H, W) float32 softmax probability of the winning prompt.
    similarity: (H, W) float32 cosine of the pixel with the winning prompt.
    classes: the class names, in the order given.
    image: the input as HxWx3 uint8 RGB (for :meth:`overlay`).

    ``scores`` and ``similarity`` are computed on first access when the run did not
    need them (no probability threshold): a video app that draws labels pays only
    for labels. The result keeps the low-resolution embeddings for that (D x h x w
    floats) and releases them once computed; the values are the same either way.
    """

    __slots__ = ("labels", "classes", "image", "_scores", "_similarity", "_finish", "_lock",
                 "_cosine", "_calibration")  # fmt: skip

    def __init__(
        self,
        labels: np.ndarray,
        scores: np.ndarray | None,
        similarity: np.ndarray | None,
        classes: list[str],
        image: np.ndarray,
        finish: Finish | None = None,
        cosine: Callable[[int], np.ndarray] | None = None,
        calibration: tuple[float, float] | None = None,
    ):
        if (scores is None or similarity is None) and finish is None:
            raise ValueError("give scores and similarity, or finish= to compute them")
        self.labels, self.classes, self.image = labels, classes, image
        self._scores, self._similarity, self._finish = scores, similarity, finish
        self._lock = threading.Lock()
        self._cosine, self._calibration = cosine, calibration

    def _complete(self) -> None:
        with self._lock:
            if self._finish is not None:
                labels, self._similarity, self._scores = self._finish()
                assert np.array_equal(labels, self.labels), "labels changed on completion"
                self._finish = None

    @property
    def scores(self) -> np.ndarray:
        if self._scores is None:
            self._complete()
        return self._scores

    @property
    def similarity(self) -> np.ndarray:
        if self._similarity is None:
            self._complete()
        return self._similarity

    def probability(self, name: str) -> np.ndarray:
        """(H, W) float32 absolute score of class ``name``: sigmoid(scale * cosine + bias)
        with the bundle's calibration (``python -m train.export.calibrate``), the cosine
        being the pixel's with the class's best name. Unlike ``scores`` (a softmax over
        what was asked) it does not depend on the other classes or the negatives: the
        same map whatever else is asked, calibrated so that of the pixels scored ~p,
        about a fraction p belong to the class (on the calibration data)."""
        if name not in self.classes:
            raise KeyError(f"{name!r} is not one of the classes {self.classes}")
        if self._calibration is None or self._cosine is None:
            raise ValueError(
                "this bundle has no score calibration: fit one on labelled images like "
                "the deployment's with `python -m train.export.calibrate --model M --data DIR`"
            )
        a, b = self._calibration
        z = a * self._cosine(self.classes.index(name)).astype(np.float64) + b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool mask of class ``name``."""
        if name not in self.classes:
            raise KeyError(f"{name!r} is not one of the classes {self.classes}")
        return self.labels == self.classes.index(name)

    def polygons(self, name: str, tolerance: float = 1.0) -> list[np.ndarray]:
        """Class ``name`` as polygons: one (N, 2) float64 ring of (x, y) pixel coordinates
        per connected part, holes joined in, simplified within ``tolerance`` pixels
        (``clips4rt.labels.polygons``; needs ``clips4rt[labels]``)."""
        from clips4rt.labels import polygons

        return polygons(self.mask(name), tolerance)

    def to_coco(self, file_name: str = "image.png", instances: bool = False) -> dict:
        """This image as a COCO dataset dict (one image, id 1; categories = the classes,
        ids from 1; one RLE annotation per class present, or per connected part with
        ``instances``). Many images: ``clips4rt.labels.CocoWriter``."""
        from clips4rt.labels import CocoWriter

        writer = CocoWriter(self.classes, instances)
        writer.add(self.labels, file_name)
        return writer.to_dict()

    def to_detections(self, instances: bool = False):
        """``supervision.Detections``: one per class present (``instances``: per connected
        part) with mask, box, class id, ``data["class_name"]`` and the mean softmax score
        as confidence; for supervision's annotators and sinks (``pip install supervision``)."""
        from clips4rt.labels import to_detections

        return to_detections(self.labels, self.classes, instances, self.scores)

    def overlay(self, alpha: float = 0.5, scale: int = 1) -> Image.Image:
        """The image with class colours blended in and a legend (PIL RGB), enlarged
        ``scale`` times (nearest)."""
        from clips4rt.visualize import overlay

        return overlay(self.image, self.labels, self.classes, alpha, scale)

    def __repr__(self) -> str:
        h, w = self.labels.shape
        return f"SegmentationResult({w}x{h}, classes={self.classes})"


def absolute_scores(info, vocab, protos, emb, size, threads: int = 0) -> dict:
    """``SegmentationResult.probability``'s inputs for a bundle with a score calibration
    ({} without one): the calibration, and the cosine map (H, W) of class k with its best
    name (``emb`` (D, h, w), or a function giving it, called when first asked)."""
    if not info.score_scale:
        return {}
    from clips4rt.kernels import match_upsample

    def cosine(k: int) -> np.ndarray:
        if vocab.fitted is not None and k >= vocab.fitted:
            raise ValueError(f"{vocab.classes[k]!r} comes from a fitted head: the bundle's "
                             "score calibration is for text prompts; use scores instead")
        e = emb() if callable(emb) else emb
        rows = [k] if vocab.owner is None else np.flatnonzero(vocab.owner == k)
        return match_upsample(e, protos[rows], size, 1.0, threads=threads)[1]

    return {"cosine": cosine, "calibration": (info.score_scale, info.score_bias)}
