"""The edge student against its ViT-B/16 teacher on this CPU: speed at a 1280x720 frame.

    python benchmarks/bench_edge.py build [--out out/edge] [--backbones a,b,...]
    python benchmarks/bench_edge.py measure [--out out/edge] [--threads 2] [--reps 20]

Speed does not depend on the weights, so everything here is random-weight: ``build``
exports the ViT-B/16 teacher (open_clip ``ViT-B-16``, QuickGELU as the OpenAI weights
use it) as an SCLIP dense bundle with the working size ``--size`` (336: SCLIP's short
side), and for each candidate backbone a CLIP-S4 student bundle of the ``edge`` preset
(``train/method/presets/edge.json``: FPN to stride 8, 512-d embeddings, ViT-B/16's text
graph) from a checkpoint written here with the preset's config and random weights,
exported by ``train.export`` as a trained one would be; then each image graph once more
as int8 (``train.export --int8``, onnxruntime static quantization). ``measure`` runs every
bundle through ``clips4rt.Segmenter`` on one 1280x720 frame (a real photo, resized),
side by side in one process: graph ms (the image graph alone on the resized frame),
end-to-end ``run`` ms (decode-free: resize, graph, matching and upsampling 20 classes
to 720p), fps, and the int8 speed-up; the teacher also with SCLIP's windows (224 px at
stride 112). Writes ``<out>/edge.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CANDIDATES = ("mobilenetv4_conv_small", "lcnet_100", "mobilenetv3_large_100",
              "efficientnet_b0", "resnet18")  # fmt: skip
CLASSES = ["person", "car", "road", "sidewalk", "building", "tree", "sky", "grass", "bicycle",
           "bus", "truck", "traffic light", "sign", "pole", "fence", "wall", "dog", "bench",
           "motorcycle", "train"]  # fmt: skip


def _frame():
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        img = Image.fromarray(data.astronaut())
    except ImportError:  # a textured stand-in
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 255, (512, 512, 3), np.uint8))
    return np.asarray(img.resize((1280, 720), Image.BILINEAR))


def build(args) -> None:
    import torch

    from clips4rt.export.clip_loader import load_clip
    from clips4rt.export.graphs import export_dense_clip
    from clips4rt.export.student import build_student
    from train import checkpoint as C
    from train.method.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, name, mean, std = load_clip("ViT-B-16", None)
    teacher = out / "vitb16_sclip.onnx"
    if not teacher.is_file():
        export_dense_clip(model, name, None, mean, std, "sclip", teacher, input_size=args.size,
                          window=0)  # fmt: skip
    calib = out / "calibration"  # int8 calibration images: scikit-image's photos
    if not calib.is_dir():
        from PIL import Image
        from skimage import data

        calib.mkdir()
        for n in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry"):
            img = Image.fromarray(getattr(data, n)()).convert("RGB")
            img.save(calib / f"{n}.png")
            img.transpose(Image.FLIP_LEFT_RIGHT).save(calib / f"{n}_flip.png")  # 8 at least
    int8_args = ["--int8", "--calibration", str(calib)]
    classes = out / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    for backbone in args.backbones.split(","):
        bundle = out / f"{backbone}.onnx"
        if bundle.is_file():
            continue
        overrides = [f"--backbone={backbone}", "--pretrained=None", "--imagenet_init=false",
                     f"--known_classes={classes}"]  # fmt: skip
        cfg = load_config("edge", overrides)
        torch.manual_seed(0)
        student = build_student(backbone, int(model.visual.output_dim), model.visual,
                                cfg.stride, cfg.decoder_width, norm=cfg.decoder_norm,
                                top_stride=cfg.top_stride)  # fmt: skip
        ckpt = out / f"{backbone}.pt"
        C.save({"model_hash": cfg.model_hash(), "config": cfg.to_dict(), "step": 0,
                "model": student.state_dict(),
                "teacher": {"name": name, "pretrained": None, "embed_dim": 512,
                            "mean": list(mean), "std": list(std),
                            "known_classes": CLASSES}}, ckpt)  # fmt: skip
        for extra, path in (([], bundle), (int8_args, out / f"{backbone}_int8.onnx")):
            subprocess.run([sys.executable, "-m", "train.export", "--checkpoint", str(ckpt), "-o",
                            str(path), "--input-size", str(args.size), *extra],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip
    int8 = out / "vitb16_sclip_int8.onnx"
    if not int8.is_file():
        subprocess.run([sys.executable, "-m", "train.export", "--clip", "ViT-B-16", "--dense",
                        "sclip", "--input-size", str(args.size), "--window", "0", *int8_args,
                        "-o", str(int8)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def measure(args) -> None:
    import clips4rt

    out = Path(args.out)
    frame = _frame()
    rows = []
    names = [("ViT-B/16 SCLIP (teacher)", "vitb16_sclip")] + [
        (b, b) for b in args.backbones.split(",")
    ]
    for label, stem in names:
        row = {"model": label}
        for variant, path in (("fp32", out / f"{stem}.onnx"), ("int8", out / f"{stem}_int8.onnx")):
            if not path.is_file():
                continue
            providers = args.providers.split(",") if args.providers else None
            seg = clips4rt.Segmenter(path, threads=args.threads, providers=providers)
            hh, ww = seg.working_size(720, 1280)
            small = seg._resize(frame, hh, ww)[None]
            reps = max(3, args.reps // 10) if stem.startswith("vitb16") else args.reps
            seg.text_embeddings(CLASSES)  # the prompts are cached, as in a video
            row[f"{variant}_graph_ms"] = _time(lambda s=seg, x=small: s.embed(x), reps)
            row[f"{variant}_run_ms"] = _time(
                lambda s=seg: s.run(frame, CLASSES, window=None), reps
            )
            row[f"{variant}_mb"] = round(path.stat().st_size / 2**20, 1)
            row["working_size"] = f"{ww}x{hh}"
            if stem == "vitb16_sclip" and variant == "fp32":
                row["windows_run_ms"] = _time(
                    lambda s=seg: s.run(frame, CLASSES, window=224, window_stride=112), 3
                )
            print(label, variant, {k: v for k, v in row.items() if k.startswith(variant)},
                  flush=True)  # fmt: skip
        rows.append(row)
    (out / "edge.json").write_text(json.dumps(rows, indent=2))
    t = rows[0]
    print(f"\n1280x720 frame, working size {t['working_size']}, {args.threads} threads, 20 "
          "classes; median ms\n")  # fmt: skip
    print("| model | graph ms | run ms | fps | int8 graph ms | int8 run ms | int8 fps | int8 "
          "speed-up (run) | MB fp32 / int8 | teacher graph / run |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for r in rows:
        i8 = "int8_run_ms" in r
        print(f"| {r['model']} | {r['fp32_graph_ms']:.1f} | {r['fp32_run_ms']:.1f} | "
              f"{1000 / r['fp32_run_ms']:.1f} | "
              + (f"{r['int8_graph_ms']:.1f} | {r['int8_run_ms']:.1f} | "
                 f"{1000 / r['int8_run_ms']:.1f} | {r['fp32_run_ms'] / r['int8_run_ms']:.2f}x | "
                 f"{r['fp32_mb']} / {r['int8_mb']} | " if i8 else "| | | | | ")
              + f"{t['fp32_graph_ms'] / min(r['fp32_run_ms'], r.get('int8_run_ms', 1e9)):.1f}x |")
    if "windows_run_ms" in t:
        print(f"\nteacher with SCLIP's windows (224/112): run {t['windows_run_ms']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("build", "measure"))
    ap.add_argument("--out", default=str(REPO / "out" / "edge"))
    ap.add_argument("--backbones", default=",".join(CANDIDATES))
    ap.add_argument("--size", type=int, default=336, help="working short side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--providers", help="onnxruntime providers, comma-separated (default: "
                    "the Segmenter's choice: TensorRT/CUDA when available)")  # fmt: skip
    args = ap.parse_args()
    build(args) if args.what == "build" else measure(args)


if __name__ == "__main__":
    main()
