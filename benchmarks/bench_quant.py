"""int8 vs float32 bundles: image-graph speed side by side (threads=2) and toy-world mIoU.

    python -m train --preset toy --out=runs/toy            # the student (if not there)
    python benchmarks/bench_quant.py --student runs/toy/step_0000500.pt

Models: the toy CLIP-S4 student (``--student``), the toy teacher in SCLIP mode (its
best dense mode), and a ViT-B/16-shaped CLIP with random weights (speed only,
``--no-vit`` skips it). Each is exported as float32 and as int8 (``train.export
--int8``, calibrated on toy-world scenes of seed 4000, never the evaluation's).
Speed: ``Segmenter.embed`` on one frame at the bundle's working size, float and int8
alternated, median of ``--reps``. Quality: ``train.evaluate`` (language mode, all 20
names) on the held-out split (toy seed 3000, ``--val-count`` scenes), all / known /
unknown mIoU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export(args: list[str], out: Path, calib: Path | None, count: int = 64) -> None:
    cmd = [sys.executable, "-m", "train.export", *args, "-o", str(out)]
    if calib is not None:
        cmd += ["--int8", "--calibration", str(calib), "--calibration-count", str(count)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(f"export failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    print("   ", done.stdout.strip().splitlines()[-1])


def speed(paths: dict, frame_hw: tuple[int, int], reps: int) -> dict:
    import clips4rt

    segs = {k: clips4rt.Segmenter(p, threads=2, spin=True) for k, p in paths.items()}
    any_seg = next(iter(segs.values()))
    hh, ww = any_seg.working_size(*frame_hw)
    x = np.random.default_rng(0).integers(0, 256, (1, hh, ww, 3), dtype=np.uint8)
    times = {k: [] for k in segs}
    for seg in segs.values():
        seg.embed(x)  # warm
    for _ in range(reps):
        for k, seg in segs.items():
            t = time.perf_counter()
            seg.embed(x)
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()} | {"size": f"{ww}x{hh}"}


def quality(path: Path, val: Path) -> dict:
    from train.evaluate import evaluate

    r = evaluate(str(path), str(val), threads=2)
    return {k: round(r[k], 2) for k in ("miou", "miou_known", "miou_unknown")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--student", required=True, help="toy CLIP-S4 checkpoint")
    p.add_argument("--val-count", type=int, default=200)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--no-vit", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from train.toyworld import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib = write_dataset(tmp / "calib", seed=4000, count=64, size=128) / "JPEGImages"
        val = write_dataset(tmp / "val", seed=3000, count=args.val_count, size=128)
        teacher = ["--model-config", "train/assets/toy-teacher.json", "--pretrained",
                   "train/assets/toy-teacher.pt", "--dense", "sclip", "--templates",
                   "imagenet", "--input-size", "96"]  # fmt: skip
        models = {
            "toy CLIP-S4 student": (["--checkpoint", args.student], (360, 640), True),
            "toy teacher, SCLIP": (teacher, (360, 640), True),
        }
        if not args.no_vit:
            vit = ["--clip", "ViT-B-16", "--dense", "maskclip", "--input-size", "448"]
            models["ViT-B/16 (random weights), MaskCLIP"] = (vit, (448, 592), False)
        for name, (exp_args, hw, measure_quality) in models.items():
            print(f"{name}:")
            f32, i8 = tmp / f"{len(name)}_f32.onnx", tmp / f"{len(name)}_i8.onnx"
            export(exp_args, f32, None)
            export(exp_args, i8, calib, 64 if measure_quality else 12)  # ViT: speed only
            ms = speed({"float32": f32, "int8": i8}, hw, args.reps)
            print(f"    graph at {ms['size']}: float32 {ms['float32']:.1f} ms, int8 "
                  f"{ms['int8']:.1f} ms -> int8 {ms['float32'] / ms['int8']:.2f}x")  # fmt: skip
            if measure_quality:
                qf, qi = quality(f32, val), quality(i8, val)
                print(f"    mIoU all/known/unknown: float32 {qf['miou']}/{qf['miou_known']}/"
                      f"{qf['miou_unknown']}, int8 {qi['miou']}/{qi['miou_known']}/"
                      f"{qi['miou_unknown']} (loss {qf['miou'] - qi['miou']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
