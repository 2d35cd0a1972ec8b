"""Few-shot transfer (``clips4rt.fit_head``) against language mode, on held-out toy scenes.

    python benchmarks/bench_fewshot.py [--model BUNDLE] [--shots 5,10,20] [--draws 3] \\
        [--support-seed 5000] [--data data/toy_val,data/toy_val_4000] [--limit 500]

For each shot count n and each draw: n labelled scenes of a toy world seed no
evaluation uses (``--support-seed``; a new random pick of the support pool per draw),
a head fitted on them (``fit_head`` with its defaults), then every scene of each
held-out folder segmented with the head: the classes with labelled cells in the
support come from the head, the others (absent from those n scenes) are asked by
name in the same call (mixing). Language mode: all names, no head. Both with the
evaluation protocol of ``train.evaluate`` (no background rule: threshold 0, no
background names or negatives). Prints mIoU / known / unknown per shot count (mean
over draws, min..max) and the fit time; writes ``--json``.

``--probe`` adds, per draw, the reference a few-shot head is up against: the linear
probe of ``train.evaluate --mode probe`` (a linear classifier with bias, trained from
scratch with torch, every class) fitted on the same n support scenes instead of half the
held-out folder, then scored on the whole held-out folder. It tells what a linear head on
this embedding reaches at n scenes, whatever the fitting method.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clips4rt  # noqa: E402
from clips4rt.fewshot import cell_labels  # noqa: E402
from train import toyworld  # noqa: E402
from train.evaluate.metrics import confusion, summarize  # noqa: E402
from train.evaluate.voc import VOCFolder  # noqa: E402

PROTOCOL = {"threshold": 0.0, "background": [], "negatives": False}


def _score(seg, data, classes, unknown, head=None) -> dict:
    n = len(classes)
    text = [c for c in classes if head is None or c not in head.classes]
    order = text + (list(head.classes) if head is not None else [])
    lut = np.array([classes.index(c) for c in order] + [-1], np.int64)  # -1 stays -1
    conf = np.zeros((n, n + 1), np.int64)
    for i in range(len(data)):
        image, mask = data.load(i)
        r = seg.run(image, text, head=head, **PROTOCOL)
        conf += confusion(mask, lut[r.labels], n)
    return summarize(conf, classes, unknown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="bundle (default: the embedded toy model)")
    ap.add_argument("--shots", default="5,10,20")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--support-seed", type=int, default=5000)
    ap.add_argument("--pool", type=int, default=400, help="support scenes drawn from")
    ap.add_argument("--data", default="data/toy_val,data/toy_val_4000")
    ap.add_argument("--limit", type=int, help="held-out scenes per folder (default: all)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--probe", action="store_true", help="also the linear probe on the support")
    ap.add_argument("--json", default=str(REPO / "out" / "fewshot.json"))
    args = ap.parse_args()
    seg = clips4rt.Segmenter(args.model, threads=args.threads)
    pool_dir = REPO / "data" / f"toy_support_{args.support_seed}_{args.pool}"
    if not (pool_dir / "classes.txt").is_file():
        toyworld.write_dataset(pool_dir, args.support_seed, args.pool)
    pool = VOCFolder(pool_dir)
    rows = []
    for folder in args.data.split(","):
        data = VOCFolder(folder, limit=args.limit)
        classes = data.classes
        assert classes == pool.classes, "support and held-out folders name different classes"
        unknown = list(data.split.get("unknown", []))
        lang = _score(seg, data, classes, unknown)
        rows.append({"data": folder, "shots": 0, "draw": None, **_keys(lang)})
        print(f"{folder}: language {lang['miou']:.1f} / {lang['miou_known']:.1f} / "
              f"{lang['miou_unknown']:.1f}", flush=True)  # fmt: skip
        for n in (int(s) for s in args.shots.split(",")):
            for draw in range(args.draws):
                rng = np.random.default_rng(1000 * n + draw)
                idx = rng.choice(len(pool), n, replace=False)
                ims, ms = zip(*(pool.load(int(i)) for i in idx))
                present = _present(seg, ims, ms, len(classes))
                names = [classes[c] for c in sorted(present)]
                remap = np.full(256, 255, np.int64)
                for j, c in enumerate(sorted(present)):
                    remap[c] = j
                t0 = time.perf_counter()
                head = clips4rt.fit_head(seg, ims, [remap[m] for m in ms], names)
                fit_s = time.perf_counter() - t0
                r = _score(seg, data, classes, unknown, head)
                row = {"data": folder, "shots": n, "draw": draw, "head_classes": len(names),
                       "fit_s": fit_s, **_keys(r)}  # fmt: skip
                if args.probe:
                    row["probe"] = _probe(seg, ims, ms, data, classes, unknown)["miou"]
                rows.append(row)
                print(f"  {n} shots, draw {draw}: {r['miou']:.1f} / {r['miou_known']:.1f} / "
                      f"{r['miou_unknown']:.1f} ({len(names)} classes from the head, fit "
                      f"{fit_s:.2f} s)" + (f"; linear probe {row['probe']:.1f}" if args.probe
                                           else ""), flush=True)  # fmt: skip
    print("\n| held-out | shots | mIoU (min..max) | known | unknown | classes from the head "
          "| fit s | mIoU - language | linear probe - language |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.data.split(","):
        base = next(r for r in rows if r["data"] == folder and r["shots"] == 0)
        print(f"| {Path(folder).name} | language | {base['miou']:.1f} | {base['miou_known']:.1f} "
              f"| {base['miou_unknown']:.1f} | 0 | | |")  # fmt: skip
        for n in (int(s) for s in args.shots.split(",")):
            rs = [r for r in rows if r["data"] == folder and r["shots"] == n]
            m = {k: float(np.mean([r[k] for r in rs])) for k in
                 ("miou", "miou_known", "miou_unknown", "head_classes", "fit_s")}  # fmt: skip
            lo, hi = min(r["miou"] for r in rs), max(r["miou"] for r in rs)
            print(f"| {Path(folder).name} | {n} | {m['miou']:.1f} ({lo:.1f}..{hi:.1f}) | "
                  f"{m['miou_known']:.1f} | {m['miou_unknown']:.1f} | {m['head_classes']:.1f} | "
                  f"{m['fit_s']:.2f} | {m['miou'] - base['miou']:+.1f} | "
              + (f"{np.mean([r['probe'] for r in rs]) - base['miou']:+.1f} |"
                 if args.probe else "|"))  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))


def _keys(r: dict) -> dict:
    return {k: r[k] for k in ("miou", "miou_known", "miou_unknown", "per_class")}


def _probe(seg, images, masks, data, classes, unknown) -> dict:
    """``train.evaluate``'s linear probe, fitted on the support scenes (torch)."""
    from train.evaluate.modes import fit_probe, probe_cells

    n = len(classes)
    xs, ys = zip(*(probe_cells(seg.embed_image(im), m) for im, m in zip(images, masks)))
    predict = fit_probe(np.concatenate(xs), np.concatenate(ys), n)
    conf = np.zeros((n, n + 1), np.int64)
    for i in range(len(data)):
        image, mask = data.load(i)
        conf += confusion(mask, predict(seg.embed_image(image), image.shape[:2]), n)
    return summarize(conf, classes, unknown)


def _present(seg, images, masks, k: int) -> set[int]:
    """Classes with at least one labelled grid cell (what fit_head can learn)."""
    out: set[int] = set()
    for image, mask in zip(images, masks):
        h, w = seg.working_size(*image.shape[:2])
        s = seg.info.stride
        cells = cell_labels(mask.astype(np.int64), h // s, w // s, k)
        out |= set(np.unique(cells[cells >= 0]).tolist())
    return out


if __name__ == "__main__":
    main()
