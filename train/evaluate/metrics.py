"""Segmentation metrics: confusion matrices and IoU with an ignore index."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(
    gt: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    n_pred: int | None = None,
    ignore: int = IGNORE,
) -> np.ndarray:
    """(n_classes, n_pred + 1) int64 counts: rows = ground truth, columns = prediction,
    the last column = "no prediction" (pred < 0). Pixels whose gt is ``ignore`` are
    skipped. ``n_pred`` defaults to ``n_classes``."""
    n_pred = n_classes if n_pred is None else n_pred
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != ignore
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= n_classes):
        raise ValueError(f"ground-truth labels outside [0, {n_classes}) and != {ignore}")
    if p.size and p.max() >= n_pred:
        raise ValueError(f"predicted labels outside [-1, {n_pred})")
    p = np.where(p < 0, n_pred, p)
    return np.bincount(g * (n_pred + 1) + p, minlength=n_classes * (n_pred + 1)).reshape(
        n_classes, n_pred + 1
    )


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class from a square-plus-one confusion matrix (see ``confusion``).

    NaN for a class absent from the ground truth and never predicted (it is left
    out of means); 0 for a class predicted but absent."""
    n = conf.shape[0]
    tp = np.diag(conf[:, :n]).astype(np.float64)
    fn = conf.sum(1) - tp
    fp = conf[:, :n].sum(0) - tp
    union = tp + fn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def summarize(conf: np.ndarray, classes: list[str], unknown: list[str]) -> dict:
    """mIoU over all / known / unknown classes (in %), their harmonic mean, pixel
    accuracy and per-class IoU."""
    iou = iou_per_class(conf)
    unk = np.array([c in unknown for c in classes])

    def mean(mask):
        vals = iou[mask]
        vals = vals[~np.isnan(vals)]
        return float(100 * vals.mean()) if vals.size else float("nan")

    known_m, unknown_m = mean(~unk), mean(unk)
    hm = (
        2 * known_m * unknown_m / (known_m + unknown_m) if known_m + unknown_m > 0 else float("nan")
    )
    total = conf.sum()
    return {
        "miou": mean(np.ones_like(unk)),
        "miou_known": known_m,
        "miou_unknown": unknown_m,
        "hm": hm,
        "pixel_accuracy": float(100 * np.trace(conf[:, : conf.shape[0]]) / total) if total else 0.0,
        "per_class": {c: (None if np.isnan(v) else float(100 * v)) for c, v in zip(classes, iou)},
    }


def hungarian_match(conf: np.ndarray) -> np.ndarray:
    """Cluster -> class assignment maximising matched pixels, from a (n_classes,
    n_clusters [+1]) confusion. Returns an int array: class index of each cluster
    (-1 for clusters left unmatched)."""
    from scipy.optimize import linear_sum_assignment

    n_classes = conf.shape[0]
    n_clusters = conf.shape[1] - 1 if conf.shape[1] > n_classes else conf.shape[1]
    rows, cols = linear_sum_assignment(conf[:, :n_clusters], maximize=True)
    mapping = np.full(n_clusters, -1, np.int64)
    mapping[cols] = rows
    return mapping
