"""The training input pipeline: loader throughput with and without worker processes, and
the share of step time a short training run spends waiting for data.

    python benchmarks/bench_data.py                 # 2000 640x480 JPEGs -> 448 px
    python benchmarks/bench_data.py --images 500 --rounds 2

1. Loader alone: ``train.method.data.StreamSource`` over N generated 640x480 JPEGs
   (smooth scenes + noise, ~60 KB each, like photos), output 448x448, batch 32;
   ``--workers=0`` (decoding in the training process) vs ``--workers=2``, alternated
   in one run, images/s after the first batch.
2. Training: ``python -m train --preset toy`` on a folder of toy-world JPEGs (``--data``,
   2 workers, 40 steps); the mean ``data_wait`` of metrics.csv once warm (steps > 10).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((640, 480), Image.BICUBIC), np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)


def loader_rate(folder: Path, workers: int, steps: int, batch: int = 32, size: int = 448):
    from train.method.data import StreamSource

    src = StreamSource(str(folder), size, batch, 0, 0, 0, 1, workers, 4)
    try:
        src.next_batch(0)  # workers started, first batch decoded
        t = time.perf_counter()
        for s in range(1, steps + 1):
            src.next_batch(s)
        return batch * steps / (time.perf_counter() - t)
    finally:
        src.close()


def data_wait_share(tmp: Path) -> float:
    from train.method.config import load_config
    from train.method.loop import train
    from train.toyworld import write_dataset

    data = write_dataset(tmp / "toy", seed=11, count=400, size=128) / "JPEGImages"
    cfg = load_config("toy", [f"--data={data}", "--workers=2", "--steps=40", "--log_every=1",
                              "--ckpt_every=40", f"--out={tmp / 'run'}"])  # fmt: skip
    train(cfg)
    rows = list(csv.DictReader((tmp / "run" / "metrics.csv").open()))
    return float(np.mean([float(r["data_wait"]) for r in rows if int(r["step"]) > 10]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "jpegs"
        make_jpegs(folder, args.images)
        steps = max(4, args.images // 32 - 2)  # about one pass
        rates = {0: [], 2: []}
        for _ in range(args.rounds):
            for w in (0, 2):
                rates[w].append(loader_rate(folder, w, steps))
        print(f"loader, {args.images} 640x480 JPEGs -> 448x448, batch 32, {steps} batches:")
        for w, r in rates.items():
            print(f"  --workers={w}: " + ", ".join(f"{x:.1f}" for x in r) + " images/s")
        ratios = [b / a for a, b in zip(rates[0], rates[2])]
        print("  workers=2 / workers=0: " + ", ".join(f"{x:.2f}x" for x in ratios))
        if not args.skip_train:
            share = data_wait_share(tmp)
            print(f"toy-folder training (2 workers, steps 11-40): data wait {100 * share:.1f} %")


if __name__ == "__main__":
    main()
