"""End-to-end frames per second on an onnxruntime provider, post-processing on the host
(C++) vs inside onnxruntime (``postprocess="graph"``), at 720p and 1080p, and the share
of each frame's time spent outside the image graph.

    python benchmarks/bench_device.py                      # CUDA when available, else CPU
    python benchmarks/bench_device.py --bundle model.onnx --providers CUDAExecutionProvider

Bundles: ``--bundle`` (repeatable; default the embedded toy student). Per bundle, size
and mode: ``Segmenter.run`` on one frame repeated ``--reps`` times (after a warm run),
median ms -> fps; "graph" = the image graph alone with its output left on the device
(IOBinding), so host share = 1 - graph / run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def graph_only(seg, frame) -> float:
    from clips4rt import bundle as B
    from clips4rt.device import device_type
    from clips4rt.kernels import resize_rgb

    hh, ww = seg.working_size(*frame.shape[:2])
    x = resize_rgb(frame, (hh, ww))[None]
    bind = seg._image.io_binding()  # noqa: SLF001 - a benchmark of the session itself
    bind.bind_cpu_input(B.IMAGE_INPUT, x)
    bind.bind_output(B.IMAGE_OUTPUT, device_type(seg.providers))
    seg._image.run_with_iobinding(bind)
    t = time.perf_counter()
    seg._image.run_with_iobinding(bind)
    return time.perf_counter() - t


def main() -> None:
    import onnxruntime as ort

    import clips4rt

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", action="append", help="image graph(s); default: embedded")
    p.add_argument("--providers", help="comma-separated (default: Segmenter's choice)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    providers = args.providers.split(",") if args.providers else None
    classes = ["sky", "grass", "water", "sand", "brick wall", "snow", "ball", "tree", "car"]
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    for bundle in args.bundle or [None]:
        for mode in ("cpu", "graph"):
            seg = clips4rt.Segmenter(bundle, providers=providers, postprocess=mode)
            name = Path(str(seg.path)).name
            for h, w in ((720, 1280), (1080, 1920)):
                frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
                seg.run(frame, classes)
                ts = []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    seg.run(frame, classes)
                    ts.append(time.perf_counter() - t)
                run = float(np.median(ts))
                g = min(graph_only(seg, frame) for _ in range(5))
                print(f"{name} {seg.providers[0]} post={mode:5s} {w}x{h}: {1000 * run:7.1f} ms "
                      f"= {1 / run:6.1f} fps; graph {1000 * g:6.1f} ms; host share "
                      f"{100 * max(0.0, 1 - g / run):4.0f} %")  # fmt: skip


if __name__ == "__main__":
    main()
