"""What each labelling output costs per 1080p frame, beside the segmentation itself.

    python benchmarks/bench_outputs.py [--reps 5] [--threads 2] [--frames 24]

Two 1920x1080 frames, segmented by the embedded toy student (threads=2) with the toy
world's 20 class names: ``toy`` (a held-out toy-world scene, seed 3000, upscaled: a few
smooth regions) and ``photo`` (skimage's astronaut, upscaled: the toy model on a real
photo gives many small ragged parts, the hard case for polygons). For each, the median
of ``--reps`` timings (after one warm-up) of:

- segment: ``Segmenter.run`` on the frame (resize, graph, labels): the reference;
- each output alone, from the result: overlay (PIL image), label PNG (encoded), JSON
  line (class shares), JSON line with polygons, COCO RLE per class, COCO per instance,
  YOLO-seg lines, supervision Detections, and one frame of the overlay video (libx264
  encode of the overlay; the mean over ``--frames`` frames, flush included).

Then ``segment_video`` end to end on a 1080p clip of ``--frames`` toy frames with
each output alone against the bare stream (``Segmenter.stream`` and nothing written):
what an output costs there, and that one not asked for costs nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

import clips4rt
from clips4rt import labels as L
from clips4rt.visualize import label_png

TOY = [c for c in (resources.files("clips4rt") / "models" / "toy.classes.txt").read_text()
       .splitlines() if c.strip()]  # fmt: skip
SIZE = (1920, 1080)


def _frames() -> dict[str, np.ndarray]:
    from skimage import data

    from train.toyworld import make_scene

    toy = Image.fromarray(make_scene(3000, 0, 256).image).resize(SIZE, Image.BILINEAR)
    photo = Image.fromarray(data.astronaut()).resize(SIZE, Image.BILINEAR)
    return {"toy": np.asarray(toy), "photo": np.asarray(photo)}


def _median(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _png(r) -> bytes:
    buf = io.BytesIO()
    label_png(r.labels, len(r.classes)).save(buf, format="PNG")
    return buf.getvalue()


def _line(r, polys: bool) -> str:
    counts = np.bincount(r.labels.ravel() + 1, minlength=len(r.classes) + 1)
    rec = {"share": {c: int(counts[k + 1]) / r.labels.size
                     for k, c in enumerate(r.classes) if counts[k + 1]}}  # fmt: skip
    if polys:
        rec["polygons"] = {c: [p.astype(int).ravel().tolist() for p in L.polygons(r.labels == k)]
                           for k, c in enumerate(r.classes) if counts[k + 1]}  # fmt: skip
    return json.dumps(rec)


def _video_frames(r, n: int) -> None:
    import av

    with tempfile.TemporaryDirectory() as d, av.open(f"{d}/o.mp4", "w") as out:
        s = out.add_stream("libx264", rate=24, options={"bf": "0"})
        s.width, s.height, s.pix_fmt = *SIZE, "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(np.asarray(r.overlay()), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def per_output(seg, frames, reps: int, n_video: int) -> None:
    print("| output (1080p frame) | " + " | ".join(frames) + " |")
    print("|---|" + "---:|" * len(frames))
    rows: dict[str, list[str]] = {}
    results = {name: seg.run(f, TOY) for name, f in frames.items()}
    for name, frame in frames.items():
        r = results[name]
        parts = sum(len(L.components(r.labels == k)) for k in np.unique(r.labels) if k >= 0)
        tests = {
            "segment (run: resize, graph, labels)": lambda f=frame: seg.run(f, TOY),
            "overlay image": lambda r=r: r.overlay(),
            "label PNG (encoded)": lambda r=r: _png(r),
            "JSON line (shares)": lambda r=r: _line(r, False),
            "JSON line + polygons": lambda r=r: _line(r, True),
            "COCO RLE, per class": lambda r=r: L.coco_annotations(r.labels, len(TOY), 1),
            "COCO RLE, per instance": lambda r=r: L.coco_annotations(
                r.labels, len(TOY), 1, instances=True
            ),  # fmt: skip
            "YOLO-seg lines": lambda r=r: L.yolo_lines(r.labels, len(TOY)),
            "supervision Detections": lambda r=r: r.to_detections(),
        }
        for label, fn in tests.items():
            rows.setdefault(label, []).append(f"{1000 * _median(fn, reps):.1f} ms")
        t0 = time.perf_counter()
        _video_frames(r, n_video)
        rows.setdefault("overlay video frame (libx264)", []).append(
            f"{1000 * (time.perf_counter() - t0) / n_video:.1f} ms"
        )
        rows.setdefault("(classes present / parts)", []).append(
            f"{len([k for k in np.unique(r.labels) if k >= 0])} / {parts}"
        )
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(cells) + " |")


def end_to_end(seg, n: int, rounds: int) -> None:
    from benchmarks.bench_video import make_clip, write_mp4
    from clips4rt.video import segment_video

    frames = make_clip(n, (SIZE[1], SIZE[0]))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        clip = d / "clip.mp4"
        write_mp4(frames, clip)
        import av

        def bare():
            with av.open(str(clip)) as c:
                for _ in seg.stream((f.to_ndarray(format="rgb24") for f in c.decode(video=0)),
                                    TOY):  # fmt: skip
                    pass

        runs = {
            "stream only (decode + segment, nothing written)": bare,
            "--jsonl": lambda: segment_video(seg, clip, TOY, jsonl=d / "a.jsonl", progress=False),
            "--jsonl --polygons": lambda: segment_video(
                seg, clip, TOY, jsonl=d / "b.jsonl", polygons=True, progress=False
            ),  # fmt: skip
            "--labels-dir": lambda: segment_video(
                seg, clip, TOY, progress=False, labels_dir=d / f"l{time.time_ns()}"
            ),  # fmt: skip
            "--out overlay.mp4": lambda: segment_video(seg, clip, TOY, d / "o.mp4", progress=False),
        }
        best = {k: float("inf") for k in runs}
        for _ in range(rounds):  # interleaved rounds, best of each
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
        base = best["stream only (decode + segment, nothing written)"]
        print(f"\n| clips4rt video, {n} frames 1080p | ms / frame | x stream only |")
        print("|---|---:|---:|")
        for k, t in best.items():
            print(f"| {k} | {1000 * t / n:.1f} | {t / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    seg = clips4rt.Segmenter(threads=args.threads)
    per_output(seg, _frames(), args.reps, args.frames)
    end_to_end(seg, args.frames, args.rounds)


if __name__ == "__main__":
    main()
