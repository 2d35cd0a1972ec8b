"""Training-free baselines of the toy teacher on a held-out toy split.

    python benchmarks/toy_baselines.py [--data data/toy_val] [--out out/baselines]

Generates the split if missing (toy world seed 3000, 500 scenes, 128x128), exports the
teacher (train/assets/toy-teacher.*) in every dense mode (maskclip, clearclip, sclip)
at input sizes 96 and 128 with the simple ("a photo of a {}.") and the 80 ImageNet
templates, and evaluates each through clips4rt.Segmenter (language mode). For the
best setting of each mode it also runs the unsupervised and linear-probe modes.
Prints a Markdown table; JSON reports go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import toyworld  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.export import export_dense_clip  # noqa: E402
from train.models.clip_loader import load_clip  # noqa: E402

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
                )
                r = evaluate(path, data, threads=args.threads)
                (out / f"{path.stem}.language.json").write_text(json.dumps(r, indent=2))
                rows.append((mode, size, templates, "language", r))
                if best is None or r["miou"] > best[1]["miou"]:
                    best = (path, r)
        for extra in () if args.no_extra else ("unsupervised", "probe"):
            r = evaluate(best[0], data, mode=extra, threads=args.threads)
            (out / f"{best[0].stem}.{extra}.json").write_text(json.dumps(r, indent=2))
            rows.append((mode, r["input_size"], best[0].stem.split("_")[-1], extra, r))
    summary = [
        {"mode": m, "input_size": z, "templates": t, "eval": e, **{k: r[k] for k in KEYS}}
        for m, z, t, e, r in rows
    ]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntoy world seed {SEED}, {COUNT} scenes; teacher {args.pretrained}\n")
    print("| dense mode | input size | templates | eval mode | mIoU | known | unknown | hm |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, size, templates, ev, r in rows:
        print(
            f"| {mode} | {size} | {templates} | {ev} | {r['miou']:.1f} | {r['miou_known']:.1f} "
            f"| {r['miou_unknown']:.1f} | {r['hm']:.1f} |"
        )


if __name__ == "__main__":
    main()
