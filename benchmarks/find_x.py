"""Find X: one or two classes asked at a time (``train.evaluate --mode single-class``).

    python benchmarks/find_x.py [--data data/toy_val] [--out out/find_x]

The embedded student (its default options: the negative vocabulary on) and the toy
teacher's training-free modes (exported with the export's defaults, sliding windows at
144 px, and the toy world's 15 known classes as their negative vocabulary, as a
student's bundle carries them) on a held-out toy folder (generated if missing: toy
world seed 3000, 500 scenes). Prints one Markdown table; JSON reports go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clips4rt  # noqa: E402
from clips4rt.export.clip_loader import load_clip  # noqa: E402
from train import toyworld  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.export import export_dense_clip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "toy_val"))
    ap.add_argument("--seed", type=int, default=3000, help="toy seed if --data is generated")
    ap.add_argument("--out", default=str(REPO / "out" / "find_x"))
    ap.add_argument("--modes", default="sclip,clearclip,maskclip")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "classes.txt").is_file():
        toyworld.write_dataset(data, args.seed, 500)
    out.mkdir(parents=True, exist_ok=True)
    models = {"student (embedded)": clips4rt.default_model()}
    assets = REPO / "train" / "assets"
    model, name, mean, std = load_clip(model_config=assets / "toy-teacher.json",
                                       pretrained=str(assets / "toy-teacher.pt"))  # fmt: skip
    known = [c for c in toyworld.CLASSES if c not in toyworld.UNKNOWN_CLASSES]
    for mode in [m for m in args.modes.split(",") if m]:
        path = out / f"teacher_{mode}.onnx"
        export_dense_clip(model, name, "toy-teacher.pt", mean, std, mode, path,
                          templates="imagenet", negatives=tuple(known))  # fmt: skip
        models[f"teacher {mode}"] = path
    print(f"\nheld-out: {data} ({len(list((data / 'JPEGImages').iterdir()))} scenes)\n")
    print("| model | one alone | all names | ratio (known / unknown) | absent asked alone: "
          "pixels | two classes | all names (pairs) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, path in models.items():
        r = evaluate(path, data, mode="single-class", threads=args.threads)
        stem = "".join(ch if ch.isalnum() else "_" for ch in label).strip("_")
        (out / f"{stem}.json").write_text(json.dumps(r, indent=2))
        x = r["ratio"]
        print(f"| {label} | {r['single']['miou']:.1f} | {r['all_names_same_images']['miou']:.1f} "
              f"| {x['miou']:.2f} ({x['known']:.2f} / {x['unknown']:.2f}) | "
              f"{r['absent_share']:.1f} % | {r['pair']['miou']:.1f} | "
              f"{r['all_names_pair_images']['miou']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
