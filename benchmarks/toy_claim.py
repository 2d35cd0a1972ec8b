"""CLIP-S4's claim on the toy world: does the student beat its teacher, above all on
the unknown classes? (issue 12)

    python benchmarks/toy_claim.py --seeds 0,1 [--ablations] [--out out/claim] [-- --steps=...]

Trains ``python -m train --preset toy`` once per seed (extra ``--key=value`` overrides
after ``--``), exports each student (ImageNet templates) and evaluates it in language
mode (all 20 names, no background rule) on the held-out split (toy world seed 3000,
500 scenes, generated when missing) at ``--size``. The teacher's side is its best
training-free dense mode there, read from ``benchmarks/toy_baselines.py``'s
``summary.json`` (``--baselines``; run it first). Prints the mean over seeds against
the teacher per class and the issue's targets (student known >= teacher + 8, unknown
>= teacher + 3, ahead on at least 3 of the 5 unknown classes). ``--ablations`` adds
one seed-0 run each with a loss off and with the unknown prototypes off.
``--eval-only`` re-scores finished runs. Writes ``<out>/claim.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import toyworld  # noqa: E402
from train.evaluate import evaluate  # noqa: E402

SEED, COUNT = 3000, 500
ABLATIONS = {
    "no contrastive": ["--w_contrastive=0"],
    "no embedding consistency": ["--w_embedding=0"],
    "no semantic consistency": ["--w_semantic=0"],
    "no unknown prototypes": ["--unknown_prototypes=0"],
}


def _run(name: str, overrides: list[str], out: Path, data: Path, size: int, train: bool) -> dict:
    run = out / name
    if train:
        t0 = time.time()
        cmd = [sys.executable, "-m", "train", "--preset", "toy", f"--out={run}", "--overwrite",
               *overrides]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        minutes = (time.time() - t0) / 60
        (run / "minutes.txt").write_text(f"{minutes:.1f}\n")
    last = sorted(run.glob("step_*.pt"))[-1]
    model = run / "model.onnx"
    subprocess.run([sys.executable, "-m", "train.export", "--checkpoint", str(last), "-o",
                    str(model), "--templates", "imagenet"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    r = evaluate(model, data, size=size)
    took = run / "minutes.txt"
    r["minutes"] = float(took.read_text()) if took.exists() else None
    r["overrides"] = overrides
    (run / "eval.json").write_text(json.dumps(r, indent=2))
    return r


def _teacher(baselines: Path) -> dict:
    rows = [r for r in json.loads(baselines.read_text()) if r["eval"] == "language"]
    if not rows:
        raise SystemExit(f"{baselines}: no language rows; run benchmarks/toy_baselines.py")
    return max(rows, key=lambda r: r["miou"])


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--size", type=int, default=192, help="evaluation input size")
    ap.add_argument("--data", default=str(REPO / "data" / "toy_val"))
    ap.add_argument("--out", default=str(REPO / "out" / "claim"))
    ap.add_argument("--baselines", default=str(REPO / "out" / "baselines" / "summary.json"))
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="score finished runs again")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "classes.txt").is_file():
        toyworld.write_dataset(data, SEED, COUNT)
    out.mkdir(parents=True, exist_ok=True)
    teacher = _teacher(Path(args.baselines))
    runs = {f"seed{s}": [*extra, f"--seed={s}"] for s in args.seeds.split(",")}
    if args.ablations:
        runs.update({a: [*extra, *o, "--seed=0"] for a, o in ABLATIONS.items()})
    results = {}
    for name, overrides in runs.items():
        results[name] = _run(name.replace(" ", "_"), overrides, out, data, args.size,
                             not args.eval_only)  # fmt: skip
    seeds = [results[f"seed{s}"] for s in args.seeds.split(",")]
    keys = ("miou", "miou_known", "miou_unknown")
    mean = {k: sum(r[k] for r in seeds) / len(seeds) for k in keys}
    per_class = {c: sum(r["per_class"][c] for r in seeds) / len(seeds) for c in toyworld.CLASSES}
    unknown = list(toyworld.UNKNOWN_CLASSES)
    ahead = [c for c in unknown if per_class[c] > teacher["per_class"][c]]
    targets = {
        "known >= teacher + 8": mean["miou_known"] >= teacher["miou_known"] + 8,
        "unknown >= teacher + 3": mean["miou_unknown"] >= teacher["miou_unknown"] + 3,
        "ahead on >= 3 of 5 unknown classes": len(ahead) >= 3,
    }
    t = teacher
    print(f"\nheld-out: toy world seed {SEED}, {COUNT} scenes; student at {args.size} px")
    win = t.get("window")  # toy_baselines' [window, stride], or absent/None = whole image
    win = f", windows {win[0]}/{win[1]}" if win else ""
    print(f"teacher's best mode: {t['mode']} {t['input_size']} px {t['templates']}{win}\n")
    print("| run | mIoU | known | unknown | minutes |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| teacher ({t['mode']}) | {t['miou']:.1f} | {t['miou_known']:.1f} | "
          f"{t['miou_unknown']:.1f} | |")  # fmt: skip
    for name, r in results.items():
        mins = f"{r['minutes']:.1f}" if r["minutes"] else ""
        print(f"| {name} | {r['miou']:.1f} | {r['miou_known']:.1f} | {r['miou_unknown']:.1f} "
              f"| {mins} |")  # fmt: skip
    print(f"| **student, mean of {len(seeds)} seeds** | {mean['miou']:.1f} | "
          f"{mean['miou_known']:.1f} | {mean['miou_unknown']:.1f} | |\n")  # fmt: skip
    print("| class | " + " | ".join(toyworld.CLASSES) + " |")
    print("| --- |" + " --- |" * len(toyworld.CLASSES))
    for label, d in (("teacher", teacher["per_class"]), ("student", per_class)):
        print(f"| {label} | " + " | ".join(f"{d[c]:.1f}" for c in toyworld.CLASSES) + " |")
    print(f"\nunknown classes where the student is ahead: {ahead}")
    for k, ok in targets.items():
        print(f"target {k}: {'met' if ok else 'missed'}")
    summary = {"teacher": teacher, "runs": results, "mean": mean, "per_class": per_class,
               "ahead_unknown": ahead, "targets": targets, "size": args.size}  # fmt: skip
    (out / "claim.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
