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

    __slots__ = ("labels", "classes", "image", "_scores", "_similarity", "_finish", "_lock")

    def __init__(
        self,
        labels: np.ndarray,
        scores: np.ndarray | None,
        similarity: np.ndarray | None,
        classes: list[str],
        image: np.ndarray,
        finish: Finish | None = None,
    ):
        if (scores is None or similarity is None) and finish is None:
            raise ValueError("give scores and similarity, or finish= to compute them")
        self.labels, self.classes, self.image = labels, classes, image
        self._scores, self._similarity, self._finish = scores, similarity, finish
        self._lock = threading.Lock()

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

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool mask of class ``name``."""
        if name not in self.classes:
            raise KeyError(f"{name!r} is not one of the classes {self.classes}")
        return self.labels == self.classes.index(name)

    def overlay(self, alpha: float = 0.5, scale: int = 1) -> Image.Image:
        """The image with class colours blended in and a legend (PIL RGB), enlarged
        ``scale`` times (nearest)."""
        from clips4rt.visualize import overlay

        return overlay(self.image, self.labels, self.classes, alpha, scale)

    def __repr__(self) -> str:
        h, w = self.labels.shape
        return f"SegmentationResult({w}x{h}, classes={self.classes})"
