"""Polygons with the small-part check (``clips4rt.labels.polygons``' ``keep_iou``, the
default 0.9) against Douglas-Peucker alone (``keep_iou=0``), side by side.

    python benchmarks/bench_polygons.py [--reps 7] [--tolerance 1]

The two 1920x1080 frames of ``bench_outputs.py`` (a toy scene: a few smooth regions;
the astronaut photo: many small ragged parts), segmented by the embedded toy student
with the toy world's 20 names. Per frame and setting: the median time of the polygons
of every class present (what ``yolo_lines`` and ``--polygons`` pay), the points written,
the parts, and the worst part's fill-back IoU (``rasterize`` of its ring against its
pixels) with how many parts fill back under 0.9.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_outputs import TOY, _frames, _median  # noqa: E402

import clips4rt  # noqa: E402
from clips4rt import labels as L  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tolerance", type=float, default=1.0)
    args = ap.parse_args()
    seg = clips4rt.Segmenter(threads=2)
    print("| frame | setting | ms | points | parts | worst part IoU | parts under 0.9 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, frame in _frames().items():
        labels = seg.run(frame, TOY).labels
        masks = [labels == k for k in np.unique(labels[labels >= 0])]
        ms = {}
        for setting, keep in (("Douglas-Peucker alone", 0.0), ("keep_iou 0.9", L.KEEP_IOU)):
            def run(keep=keep, masks=masks):
                return [L.polygons(m, args.tolerance, keep_iou=keep) for m in masks]

            ms[setting] = 1000 * _median(run, args.reps)
            ious = []
            for m in masks:  # each part alone against its own ring
                for part in L.components(m):
                    (ring,) = L.polygons(part, args.tolerance, keep_iou=keep)
                    back = L.rasterize([ring], part.shape)
                    ious.append((back & part).sum() / (back | part).sum())
            points = sum(len(p) for ps in run() for p in ps)
            print(f"| {name} | {setting} | {ms[setting]:.1f} | {points} | {len(ious)} | "
                  f"{min(ious):.2f} | {sum(i < 0.9 for i in ious)} |")  # fmt: skip
        print(f"| {name} | ratio | {ms['keep_iou 0.9'] / ms['Douglas-Peucker alone']:.2f} | "
              "| | | |")  # fmt: skip


if __name__ == "__main__":
    main()
