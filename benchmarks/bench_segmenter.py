"""Segmenter overhead vs raw onnxruntime (vs torch eager), side by side in one run.

    python benchmarks/bench_segmenter.py --embedded [--repeats 15]   # video sizes
    python benchmarks/bench_segmenter.py --text-cache 5 [--clip ViT-B-16]
    python benchmarks/bench_segmenter.py [--size 448] [--repeats 5] [--clip ViT-B-16]

``--text-cache N``: cold vs warm start of the text side (random-weight ``--clip``
bundle, 80 templates, N classes, ``Segmenter(cache_dir=...)``).

``--embedded``: the embedded toy student (``clips4rt/models/toy.onnx``), 21 classes
(the toy world's 20 + "person"), threads=2, text cached, on 1280x720 and 1920x1080
frames (toy-world scenes upscaled): ``Segmenter.run(frame)`` end to end vs the raw
image graph on the same resized input, the two interleaved, min of rounds (targets
<= 1.15 at 720p, <= 1.30 at 1080p); then, separately, run + reading ``.scores`` and
the resize alone.

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

import clips4rt

CLASSES = ["person", "car", "tree", "sky", "road", "building", "dog", "cat", "grass", "water"]


def _toy_frames(size: tuple[int, int], n: int = 3) -> list[np.ndarray]:
    """Toy-world scenes (held-out seed 3000) upscaled to (H, W): image-like frames."""
    from PIL import Image

    from train.toyworld import make_scene

    h, w = size
    return [
        np.asarray(Image.fromarray(make_scene(3000, i, 256).image).resize((w, h), Image.BILINEAR))
        for i in range(n)
    ]


def bench_embedded(repeats: int, threads: int = 2) -> None:
    from importlib import resources

    root = resources.files("clips4rt") / "models"
    classes = [c for c in (root / "toy.classes.txt").read_text().split("\n") if c.strip()]
    classes.append("person")
    seg = clips4rt.Segmenter(str(root / "toy.onnx"), threads=threads)
    seg.text_embeddings(classes)
    print(
        f"embedded toy student ({seg.info.kind}, stride {seg.info.stride}, D "
        f"{seg.info.embed_dim}), {len(classes)} classes, threads={threads}, text cached, "
        f"min of {repeats} interleaved rounds per frame; onnxruntime "
        f"{clips4rt.segmenter.ort.__version__}"
    )
    for H, W, target in ((720, 1280, 1.15), (1080, 1920, 1.30)):
        ratios = []
        for frame in _toy_frames((H, W)):
            hh, ww = seg.working_size(H, W)
            small = seg._resize(frame, hh, ww)[None]
            # the target's pair interleaved alone; the parts timed afterwards (their
            # memory traffic between run and raw would disturb the pair)
            pair = {
                "raw": lambda small=small: seg.embed(small),
                "run": lambda frame=frame: seg.run(frame, classes),
            }
            parts = {
                "run+scores": lambda frame=frame: seg.run(frame, classes).scores,
                "resize": lambda frame=frame, hh=hh, ww=ww: seg._resize(frame, hh, ww),
            }
            times = {k: [] for k in (*pair, *parts)}
            for group in (pair, parts):
                for f in group.values():
                    f()
                for _ in range(repeats):
                    for k, f in group.items():
                        t = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t)
            m = {k: min(v) * 1e3 for k, v in times.items()}
            ratios.append(m["run"] / m["raw"])
            print(
                f"  {W}x{H} -> graph {ww}x{hh}: raw {m['raw']:.2f} ms, run {m['run']:.2f} ms "
                f"(run/raw {m['run'] / m['raw']:.3f}), run + .scores {m['run+scores']:.2f} ms "
                f"({m['run+scores'] / m['raw']:.3f}), resize {m['resize']:.2f} ms"
            )
        print(
            f"  {W}x{H}: run/raw over {len(ratios)} frames: max {max(ratios):.3f}, "
            f"mean {statistics.mean(ratios):.3f} (target <= {target})"
        )
        _post_threads_ab(seg, classes, (H, W), repeats)


def _post_threads_ab(seg, classes, size, repeats) -> None:
    """run() with post_threads 1 vs 2 (the default at threads=2), interleaved."""
    frame = _toy_frames(size, 1)[0]
    times = {1: [], 2: []}
    for _ in range(repeats):
        for pt in times:
            seg.post_threads = pt
            t = time.perf_counter()
            seg.run(frame, classes)
            times[pt].append(time.perf_counter() - t)
    seg.post_threads = 2
    m = {pt: min(v) * 1e3 for pt, v in times.items()}
    print(f"    post_threads 1 vs 2 (A/B): run {m[1]:.2f} vs {m[2]:.2f} ms")


def bench_text_cache(clip: str, n_classes: int) -> None:
    """Cold vs warm start of the text side: a random-weight bundle of ``clip`` with the
    80 ImageNet templates, ``n_classes`` class names, ``Segmenter(cache_dir=...)``."""
    import torch

    from clips4rt.export.clip_loader import load_clip
    from train.export import export_dense_clip

    torch.manual_seed(0)
    model, name, mean, std = load_clip(clip)
    classes = CLASSES[:n_classes]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_dense_clip(model, name, None, mean, std, "maskclip", path, templates="imagenet")
        cache = Path(tmp) / "cache"
        for state in ("cold", "warm", "warm"):
            t0 = time.perf_counter()
            seg = clips4rt.Segmenter(path, cache_dir=cache)
            t1 = time.perf_counter()
            seg.text_embeddings(classes)
            t2 = time.perf_counter()
            print(
                f"{name}, {len(seg.info.prompt_templates)} templates, {len(classes)} classes, "
                f"{state} cache: load {t1 - t0:.2f} s + text embeddings {t2 - t1:.3f} s"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedded", action="store_true", help="the toy student at video sizes")
    ap.add_argument("--text-cache", type=int, metavar="N", help="cold/warm text side, N classes")
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.embedded:
        bench_embedded(args.repeats, args.threads)
        return
    if args.text_cache:
        bench_text_cache(args.clip, args.text_cache)
        return
    import torch

    from clips4rt.export.clip_loader import load_clip
    from clips4rt.export.dense_clip import DenseCLIPImage
    from train.export import export_dense_clip

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
