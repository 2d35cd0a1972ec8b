"""Segmenter overhead vs raw onnxruntime vs torch eager, side by side in one run.

    python benchmarks/bench_segmenter.py [--size 448] [--repeats 5] [--clip ViT-B-16]

Exports a random-weight dense model of the given open_clip architecture (default
ViT-B/16, MaskCLIP mode, fp32) to a temp folder, then times on one HxWx3 uint8
image, interleaving the three in each round (median of rounds):
- raw: ``InferenceSession.run`` of the image graph alone;
- segmenter: ``Segmenter.run(image, classes)`` end to end, text embeddings cached
  (image checks, resize if any, graph, matching + upsampling + background rule);
- torch: the same DenseCLIPImage module in eager mode under ``torch.no_grad``.
Targets: segmenter/raw <= 1.10, torch/segmenter >= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import clips4rt
from train.clip_loader import load_clip
from train.export import export_dense_clip
from train.models.dense_clip import DenseCLIPImage

CLASSES = ["person", "car", "tree", "sky", "road", "building", "dog", "cat", "grass", "water"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, name, mean, std = load_clip(args.clip)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        t0 = time.perf_counter()
        export_dense_clip(
            model, name, None, mean, std, "maskclip", path, input_size=args.size, templates="simple"
        )
        print(f"export + parity check: {time.perf_counter() - t0:.1f} s")
        seg = clips4rt.Segmenter(path)
        dense = DenseCLIPImage(model.visual, "maskclip", mean, std).eval()
        img = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
        batch = img[None]
        seg.run(img, CLASSES)  # warm-up, fills the text cache
        timed = {"raw": lambda: seg.embed(batch), "segmenter": lambda: seg.run(img, CLASSES)}
        timed["torch"] = lambda: dense(torch.from_numpy(batch))
        times: dict[str, list[float]] = {k: [] for k in timed}
        with torch.no_grad():
            timed["torch"]()
            for _ in range(args.repeats):
                for k, fn in timed.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{name} maskclip, {args.size}x{args.size}, {len(CLASSES)} classes, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    for k, v in med.items():
        print(
            f"  {k:10s} median {v * 1000:8.1f} ms  (runs: "
            + ", ".join(f"{x * 1000:.0f}" for x in times[k])
            + ")"
        )
    print(f"segmenter/raw   = {med['segmenter'] / med['raw']:.3f}  (target <= 1.10)")
    print(f"torch/segmenter = {med['torch'] / med['segmenter']:.3f}  (target >= 1.0)")


if __name__ == "__main__":
    main()
