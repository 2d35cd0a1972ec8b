"""Video rate of the runtime: stream() vs graph-only, and `clips4rt video` end to end.

    python benchmarks/bench_video.py [--frames 120] [--threads 2] [--rounds 3]

Makes a synthetic 1280x720 clip: a camera panning across toy-world scenes (held-out
seed 3000, upscaled), 24 fps. With the embedded toy student and the toy world's 20
class names, threads=2, it measures frames per second of
- graph only: a loop of raw image-graph runs on the frames already resized;
- run loop: ``Segmenter.run`` frame after frame (labels; no pipelining);
- stream: ``Segmenter.stream`` over the 720p frames (resize, graph and labels,
  pipelined), target >= 0.85 x graph only;
- ``clips4rt video``: decode the clip (H.264 written by this script) + stream +
  overlay + encode (libx264), the whole command's work.
Best of ``--rounds`` rounds each, the rounds interleaved.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

import clips4rt
from train.toyworld import make_scene


def make_clip(n: int, size=(720, 1280)) -> list[np.ndarray]:
    """n frames of a pan across four toy scenes placed side by side."""
    h, w = size
    strip = np.concatenate([make_scene(3000, i, 256).image for i in range(4)], axis=1)
    scale = h / strip.shape[0]
    strip = np.asarray(
        Image.fromarray(strip).resize((round(strip.shape[1] * scale), h), Image.BILINEAR)
    )
    span = strip.shape[1] - w
    return [np.ascontiguousarray(strip[:, i * span // max(1, n - 1) :][:, :w]) for i in range(n)]


def write_mp4(frames: list[np.ndarray], path: Path, fps: int = 24) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = resources.files("clips4rt") / "models"
    classes = [c for c in (root / "toy.classes.txt").read_text().split("\n") if c.strip()]
    seg = clips4rt.Segmenter(str(root / "toy.onnx"), threads=args.threads)
    seg.text_embeddings(classes)
    frames = make_clip(args.frames)
    hh, ww = seg.working_size(*frames[0].shape[:2])
    small = [seg._resize(f, hh, ww)[None] for f in frames]

    def graph_only():
        for s in small:
            seg.embed(s)

    def run_loop():
        for f in frames:
            seg.run(f, classes)

    def stream():
        for _ in seg.stream(frames, classes):
            pass

    timed = {"graph only": graph_only, "run loop": run_loop, "stream": stream}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_mp4(frames, clip)
        try:
            from clips4rt.video import segment_video

            timed["clips4rt video"] = lambda: segment_video(
                seg, clip, classes, Path(tmp) / "overlay.mp4", progress=False
            )
        except clips4rt.VideoError as e:  # pragma: no cover - PyAV missing
            print(f"(clips4rt video skipped: {e})")
        best = {k: float("inf") for k in timed}
        graph_only()  # warm-up
        for _ in range(args.rounds):
            for k, f in timed.items():
                t = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t)
    fps = {k: args.frames / t for k, t in best.items()}
    print(
        f"{args.frames} frames 1280x720 (graph input {ww}x{hh}), embedded toy student, "
        f"{len(classes)} classes, threads={args.threads}, best of {args.rounds} rounds"
    )
    for k, v in fps.items():
        print(f"  {k:15s} {v:7.1f} fps  ({1e3 / v:6.2f} ms/frame)")
    print(f"stream / graph only = {fps['stream'] / fps['graph only']:.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()
