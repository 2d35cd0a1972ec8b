"""How pixel embeddings spread: the diagnostic behind the unsupervised and probe gaps
(issue 31).

    python benchmarks/embedding_stats.py --data data/toy_val --limit 100 \\
        --model "student=clips4rt/models/toy.onnx@192" \\
        --model "teacher maskclip=out/three/teacher_maskclip_144.onnx@144w96"

For each bundle (``NAME=PATH@SIZE``, ``w<WINDOW>`` for sliding windows at half stride),
the unit pixel embeddings of the labelled grid cells of the first ``--limit`` scenes
(labels resized to the grid by nearest neighbour): the participation ratio of their
covariance's eigenvalues (how many directions carry the variance), the variance share
of the top 5, and the **between-class share** of the total variance (sum over classes
of n_c |mean_c - mean|^2 over sum |x - mean|^2): the higher, the more of the spread is
what tells classes apart, which k-means (unsupervised) and a linear probe both need.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clips4rt  # noqa: E402
from train.evaluate.voc import VOCFolder  # noqa: E402


def stats(seg, data, size, window) -> dict:
    from PIL import Image

    xs, ys = [], []
    for i in range(len(data)):
        image, mask = data.load(i)
        kw = {"window": window, "window_stride": window // 2} if window else {"window": None}
        e = seg.embed_image(image, size, **kw)
        d, h, w = e.shape
        small = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)).reshape(-1)
        x = e.reshape(d, -1).T
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        keep = small != 255
        xs.append(x[keep])
        ys.append(small[keep])
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys)
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    mu = x.mean(0)
    total = ((x - mu) ** 2).sum(1).mean()
    between = sum(
        (y == c).sum() * ((x[y == c].mean(0) - mu) ** 2).sum() for c in np.unique(y)
    ) / len(x)
    return {
        "participation_ratio": float(ev.sum() ** 2 / (ev**2).sum()),
        "top5_share": float(ev[:5].sum() / ev.sum()),
        "between_share": float(between / total),
        "cells": len(x),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/toy_val")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH@SIZE[wWINDOW]")
    args = ap.parse_args()
    data = VOCFolder(args.data, limit=args.limit)
    print("| model | participation ratio | top-5 variance share | between-class share |")
    print("| --- | --- | --- | --- |")
    for spec in args.model:
        name, rest = spec.split("=", 1)
        path, setting = rest.rsplit("@", 1)
        size, _, window = setting.partition("w")
        r = stats(clips4rt.Segmenter(path, threads=1), data, int(size), int(window or 0))
        print(f"| {name} | {r['participation_ratio']:.1f} | {r['top5_share']:.2f} | "
              f"{r['between_share']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
