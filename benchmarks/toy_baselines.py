"""Training-free baselines of the toy teacher on a held-out toy split.

    python benchmarks/toy_baselines.py [--data data/toy_val] [--out out/baselines]

Generates the split if missing (toy world seed 3000, 500 scenes, 128x128), exports the
teacher (train/assets/toy-teacher.*) in every dense mode (maskclip, clearclip, sclip)
at each input size (--sizes) with the simple ("a photo of a {}.") and/or the 80
ImageNet templates, and evaluates each through clips4rt.Segmenter (language mode),
whole image and in sliding windows (--windows: 0 = whole image, 96 = windows of the
teacher's native 96 px at stride 48). For the best setting of each mode it also runs
the unsupervised and linear-probe modes.
Prints a Markdown table; JSON reports go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clips4rt.export.clip_loader import load_clip  # noqa: E402
from train import toyworld  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.export import export_dense_clip  # noqa: E402

SEED, COUNT = 3000, 500
KEYS = ("miou", "miou_known", "miou_unknown", "hm", "per_class")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "toy_val"))
    ap.add_argument("--out", default=str(REPO / "out" / "baselines"))
    assets = REPO / "train" / "assets"
    ap.add_argument("--model-config", default=str(assets / "toy-teacher.json"))
    ap.add_argument("--pretrained", default=str(assets / "toy-teacher.pt"))
    ap.add_argument("--modes", default="maskclip,clearclip,sclip")
    ap.add_argument("--sizes", default="96,128")
    ap.add_argument("--templates", default="simple,imagenet")
    ap.add_argument("--windows", default="0,96:48",
                    help="WINDOW:STRIDE pixels, comma-separated; 0 = whole image")  # fmt: skip
    ap.add_argument("--threads", type=int, help="CPU threads of the evaluations")
    ap.add_argument(
        "--no-extra", action="store_true", help="skip the unsupervised and probe evaluations"
    )
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "classes.txt").is_file():
        toyworld.write_dataset(data, SEED, COUNT)
    out.mkdir(parents=True, exist_ok=True)
    model, name, mean, std = load_clip(
        model_config=Path(args.model_config), pretrained=args.pretrained
    )
    rows = []
    for mode in args.modes.split(","):
        best = None
        for size in [int(x) for x in args.sizes.split(",")]:
            for templates in args.templates.split(","):
                path = out / f"{mode}_{size}_{templates}.onnx"
                export_dense_clip(
                    model,
                    name,
                    args.pretrained,
                    mean,
                    std,
                    mode,
                    path,
                    input_size=size,
                    templates=templates,
                    window=0,
                )
                for spec in args.windows.split(","):
                    window = tuple(int(x) for x in spec.split(":")) if spec != "0" else ()
                    win, step = window or (None, None)
                    r = evaluate(path, data, threads=args.threads, window=win, window_stride=step)
                    tag = f"{path.stem}_w{spec.replace(':', '-')}"
                    (out / f"{tag}.language.json").write_text(json.dumps(r, indent=2))
                    rows.append((mode, size, templates, window, "language", r))
                    if best is None or r["miou"] > best[2]["miou"]:
                        best = (path, window, r)
        for extra in () if args.no_extra else ("unsupervised", "probe"):
            path, window = best[:2]
            r = evaluate(path, data, mode=extra, threads=args.threads,
                         window=window[0] if window else None,
                         window_stride=window[1] if window else None)  # fmt: skip
            (out / f"{path.stem}_{extra}.json").write_text(json.dumps(r, indent=2))
            rows.append((mode, r["input_size"], path.stem.split("_")[-1], window, extra, r))
    summary = [
        {"mode": m, "input_size": z, "templates": t, "window": w, "eval": e,
         **{k: r[k] for k in KEYS}}
        for m, z, t, w, e, r in rows
    ]  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntoy world seed {SEED}, {COUNT} scenes; teacher {args.pretrained}\n")
    print("| dense mode | input size | templates | window | eval mode | mIoU | known | unknown "
          "| hm |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for mode, size, templates, window, ev, r in rows:
        win = f"{window[0]}/{window[1]}" if window else "whole"
        print(
            f"| {mode} | {size} | {templates} | {win} | {ev} | {r['miou']:.1f} "
            f"| {r['miou_known']:.1f} | {r['miou_unknown']:.1f} | {r['hm']:.1f} |"
        )


if __name__ == "__main__":
    main()
