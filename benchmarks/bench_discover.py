"""Segmenter.discover on the toy world: how its segments match the scenes' regions, how
often a segment's top vocabulary name is its main class, and its cost per 720p frame.

    python benchmarks/bench_discover.py [--seed 3000] [--scenes 30] [--model BUNDLE]

The embedded toy student (or ``--model``, at 192 px), threads=2. For ``--scenes``
held-out toy scenes (192 px) of ``--seed``: the mean over scenes of the matched IoU (each
ground-truth class matched to one segment by the Hungarian method, unmatched classes
count 0, averaged over the scene's classes), the mean of (segments - classes), and the
top-1 name accuracy (the toy world's 20 names as the vocabulary; segments over 5 % of
the image; right when the name is the segment's majority class). Rows: k chosen (the
silhouette rule), k fixed at 4, and k = the scene's own class count (what the embeddings
allow when k is right). Speed: a 1280x720 frame (a toy scene upscaled), mean of 5 after
a warm-up, for discover (k chosen, k = 5) beside ``run`` with the 20 names.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

import clips4rt
from train.toyworld import make_scene
from train.toyworld.world import CLASSES


def quality(seg, seed: int, n: int, true_k: bool = False, **kw) -> tuple[float, float, float]:
    ious, extra, hits = [], [], []
    for i in range(n):
        scene = make_scene(seed, i, 192)
        if true_k:
            kw["k"] = len(np.unique(scene.mask[scene.mask != 255]))
        d = seg.discover(scene.image, vocabulary=list(CLASSES), size=192, **kw)
        gt = scene.mask.astype(int)
        classes = np.unique(gt)
        iou = np.array([[((gt == c) & (d.labels == j)).sum() / ((gt == c) | (d.labels == j)).sum()
                         for j in range(d.k)] for c in classes])  # fmt: skip
        rows, cols = linear_sum_assignment(iou, maximize=True)
        ious.append(iou[rows, cols].sum() / len(classes))
        extra.append(d.k - len(classes))
        for j, s in enumerate(d.segments):
            if s.share > 0.05:
                hits.append(CLASSES[np.bincount(gt[d.labels == j]).argmax()] == s.name)
    return float(np.mean(ious)), float(np.mean(extra)), float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--model", help="bundle (default: the embedded toy student)")
    ap.add_argument("--no-speed", action="store_true", help="quality only")
    args = ap.parse_args()
    seg = clips4rt.Segmenter(args.model, threads=2)
    print(f"toy seed {args.seed}, {args.scenes} scenes at 192 px\n")
    print("| k | matched IoU | segments - classes | top-1 name right |")
    print("|---|---:|---:|---:|")
    for label, kw in (("chosen (silhouette)", {}), ("fixed 4", {"k": 4}),
                      ("the scene's class count", {"true_k": True})):  # fmt: skip
        iou, extra, hit = quality(seg, args.seed, args.scenes, **kw)
        print(f"| {label} | {iou:.3f} | {extra:+.1f} | {100 * hit:.1f} % |")
    if args.no_speed:
        return
    frame = np.asarray(Image.fromarray(make_scene(args.seed, 0, 256).image).resize((1280, 720)))
    print("\n| 1280x720 frame | ms |")
    print("|---|---:|")
    for label, fn in (("discover, k chosen", lambda: seg.discover(frame)),
                      ("discover, k = 5", lambda: seg.discover(frame, k=5)),
                      ("run, 20 names", lambda: seg.run(frame, list(CLASSES)))):  # fmt: skip
        fn()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        print(f"| {label} | {1000 * (time.perf_counter() - t0) / 5:.1f} |")


if __name__ == "__main__":
    main()
