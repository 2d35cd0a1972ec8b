"""The find-X protocol (``python -m train.evaluate --mode single-class``): how a bundle
answers when asked for one or two things, with its default options (negative
vocabulary on), against the same classes asked with every name.

For each image: every class present is asked alone (its IoU accumulated over the
images where it is present), ``absent`` classes not present are asked alone (the share
of pixels labelled with them: false positives), and one pair of present classes is
asked together (seeded). The reference is the language protocol's run (every name,
no negatives, no threshold) scored on the same images.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm


def _iou(inter: np.ndarray, union: np.ndarray, mask: np.ndarray) -> float:
    ok = mask & (union > 0)
    return float(100 * (inter[ok] / union[ok]).mean()) if ok.any() else float("nan")


def eval_single_class(seg, data, classes, unknown, size=None, templates=None, absent=3,
                      seed=0, window=None) -> dict:  # fmt: skip
    n = len(classes)
    rng = np.random.default_rng(seed)
    acc = {k: np.zeros((2, n)) for k in ("one", "all_one", "pair", "all_pair")}  # I, U
    fp: list[float] = []
    opts = dict(size=size, templates=templates, **(window or {}))
    for i in tqdm(range(len(data)), desc="single-class", unit="img"):
        image, mask = data.load(i)
        full = seg.run(image, classes, threshold=0.0, background=[], negatives=False,
                       **opts).labels  # fmt: skip
        valid = mask != 255
        present = [k for k in np.unique(mask[valid]) if k < n]

        def add(key, k, pred, mask=mask, valid=valid):
            gt = (mask == k) & valid
            acc[key][0, k] += (pred & gt).sum()
            acc[key][1, k] += ((pred & valid) | gt).sum()

        for k in present:
            add("one", k, seg.run(image, [classes[k]], **opts).labels == 0)
            add("all_one", k, full == k)
        others = [k for k in range(n) if k not in present]
        for k in rng.choice(others, min(absent, len(others)), replace=False):
            fp.append(float((seg.run(image, [classes[k]], **opts).labels[valid] == 0).mean()))
        if len(present) >= 2:
            a, b = (int(x) for x in rng.choice(present, 2, replace=False))
            pair = seg.run(image, [classes[a], classes[b]], **opts).labels
            for j, k in enumerate((a, b)):
                add("pair", k, pair == j)
                add("all_pair", k, full == k)
    unk = np.array([c in unknown for c in classes])
    out = {}
    for key in acc:
        inter, union = acc[key]
        out[key] = {"miou": _iou(inter, union, np.ones(n, bool)),
                    "known": _iou(inter, union, ~unk),
                    "unknown": _iou(inter, union, unk)}  # fmt: skip
    per_class = {}
    for k, c in enumerate(classes):
        if acc["one"][1, k] > 0:
            per_class[c] = {
                "one": float(100 * acc["one"][0, k] / acc["one"][1, k]),
                "all": float(100 * acc["all_one"][0, k] / acc["all_one"][1, k]),
            }
    ratio = {s: out["one"][s] / out["all_one"][s] for s in ("miou", "known", "unknown")}
    return {
        "single": out["one"],
        "all_names_same_images": out["all_one"],
        "ratio": ratio,
        "absent_share": float(100 * np.mean(fp)) if fp else float("nan"),
        "absent_queries": len(fp),
        "pair": out["pair"],
        "all_names_pair_images": out["all_pair"],
        "per_class": per_class,
    }
