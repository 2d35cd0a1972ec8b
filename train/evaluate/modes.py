"""Evaluate a bundle on a VOC-style folder, through clips4rt.Segmenter (what users deploy).

    python -m train.evaluate --model toy.onnx --data data/toy_val [--json out.json]
    python -m train.evaluate --model toy.onnx --data data/toy_val --mode unsupervised
    python -m train.evaluate --model toy.onnx --data data/toy_val --mode probe

Modes:
- ``language`` (default): prompts = the class names; mIoU over all / known / unknown
  classes and their harmonic mean (unknown classes from --unknown-classes, else the
  folder's split.json).
- ``unsupervised``: spherical k-means (k = number of classes; the best of
  ``RESTARTS`` = 5 k-means++ seedings by total cosine, as k-means implementations
  usually restart) on the pixel embeddings, clusters matched to classes by the
  Hungarian algorithm; ``--kmeans-runs`` (default 5) such clusterings from successive
  seeds, each matched on its own, scored on their pooled confusions (the report lists
  each run's mIoU). (Before 2026-12-03: one seeding; before 2026-12-04: one run, which
  ``--kmeans-runs 1`` reproduces - one run's figure moves by up to 4-5 mIoU with its
  seed.)
- ``probe``: a linear classifier on the pixel embeddings, trained on the first half
  of the images (labels resized to the embedding grid) and scored on the second half.
- ``single-class``: the find-X protocol (``train.evaluate.single``): each present class
  asked alone, three absent ones asked alone, a pair asked together, with the bundle's
  default options, against the same classes asked with every name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import clips4rt
from clips4rt.kernels import match_upsample
from train.evaluate.metrics import confusion, hungarian_match, summarize
from train.evaluate.voc import VOCFolder
from train.kmeans import best_kmeans

RESTARTS = 5  # k-means++ seedings of one clustering (the best fit is scored)
KMEANS_RUNS = 5  # clusterings of the unsupervised mode, scored on their pooled confusions
MAX_KMEANS_RUNS = 100


def eval_language(seg, data, classes, size=None, templates=None, batch=16, window=None
                  ) -> np.ndarray:  # fmt: skip
    n = len(classes)
    conf = np.zeros((n, n + 1), np.int64)
    for start in tqdm(range(0, len(data), batch), desc="language", unit="batch"):
        items = [data.load(i) for i in range(start, min(start + batch, len(data)))]
        results = seg.run_batch(
            [im for im, _ in items],
            classes,
            threshold=0.0,
            background=[],
            templates=templates,
            size=size,
            negatives=False,  # the protocol: all names, no background rule
            **(window or {}),
        )
        for (_, mask), r in zip(items, results):
            conf += confusion(mask, r.labels, n)
    return conf


def _embeddings(seg, data, indices, size, window=None):
    for i in indices:
        image, mask = data.load(i)
        yield seg.embed_image(image, size, **(window or {})), image, mask


def eval_unsupervised(seg, data, n, size=None, sample=200_000, seed=0, window=None,
                      restarts=RESTARTS, runs=1) -> np.ndarray:  # fmt: skip
    """The unsupervised mode: ``runs`` clusterings of one pixel sample (k-means seeded
    from ``seed``, ``seed + 1``, ...; each the best of ``restarts`` by total cosine), each
    matched to the classes on its own. Returns the (runs, n, n + 1) matched confusions
    (``runs=1`` is the protocol before 2026-12-04 exactly)."""
    if not (isinstance(runs, int) and 1 <= runs <= MAX_KMEANS_RUNS):
        raise ValueError(f"k-means runs must be an int in [1, {MAX_KMEANS_RUNS}], got {runs!r}")
    rng = np.random.default_rng(seed)
    feats = []
    per_image = max(1, sample // len(data))
    for emb, _, _ in tqdm(
        _embeddings(seg, data, range(len(data)), size, window),
        total=len(data),
        desc="embed",
        unit="img",
    ):
        f = emb.reshape(emb.shape[0], -1).T
        feats.append(f[rng.choice(len(f), min(per_image, len(f)), replace=False)])
    x = torch.from_numpy(np.concatenate(feats))
    del feats
    cents = []
    for r in range(runs):
        gen = torch.Generator().manual_seed(seed + r)
        cents.append(best_kmeans(x, n, restarts, gen)[1].numpy())
    del x
    conf = np.zeros((runs, n, n + 1), np.int64)
    for emb, image, mask in tqdm(
        _embeddings(seg, data, range(len(data)), size, window),
        total=len(data),
        desc="assign",
        unit="img",
    ):
        for r, cent in enumerate(cents):
            labels, _, _ = match_upsample(emb, cent, image.shape[:2], 1.0, labels_only=True)
            conf[r] += confusion(mask, labels, n)
    out = np.zeros_like(conf)
    for r in range(runs):
        for cluster, cls in enumerate(hungarian_match(conf[r])):
            out[r, :, cls if cls >= 0 else n] += conf[r, :, cluster]
        out[r, :, n] += conf[r, :, n]
    return out


def probe_cells(emb: np.ndarray, mask: np.ndarray):
    """(cells x D, labels) of one image for the probe: the mask resized (nearest) to the
    embedding grid, ignore (255) cells left out."""
    from PIL import Image

    h, w = emb.shape[1:]
    small = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)).reshape(-1)
    keep = small != 255
    return emb.reshape(emb.shape[0], -1).T[keep], small[keep].astype(np.int64)


def fit_probe(x: np.ndarray, y: np.ndarray, n: int, epochs=300, seed=0):
    """The probe: a linear classifier with bias on 10 x the unit embeddings (Adam, lr
    0.01, full batch). Returns a function (D, h, w) embedding, (H, W) -> (H, W) labels
    (logits upsampled bilinearly)."""
    import torch.nn.functional as F

    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], n)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(lin(x * 10), y).backward()
        opt.step()

    @torch.no_grad()
    def predict(emb: np.ndarray, shape) -> np.ndarray:
        logits = torch.einsum("kd,dhw->khw", lin.weight, torch.from_numpy(emb) * 10)
        logits = logits + lin.bias[:, None, None]
        return F.interpolate(logits[None], size=shape, mode="bilinear")[0].argmax(0).numpy()

    return predict


def eval_probe(seg, data, n, size=None, epochs=300, seed=0, window=None) -> np.ndarray:
    half = len(data) // 2
    if half < 1:
        raise ValueError("probe mode needs at least 2 images (half train, half test)")
    xs, ys = [], []
    for emb, _, mask in tqdm(
        _embeddings(seg, data, range(half), size, window),
        total=half,
        desc="probe train",
        unit="img",
    ):
        x, y = probe_cells(emb, mask)
        xs.append(x)
        ys.append(y)
    predict = fit_probe(np.concatenate(xs), np.concatenate(ys), n, epochs, seed)
    conf = np.zeros((n, n + 1), np.int64)
    for emb, image, mask in tqdm(
        _embeddings(seg, data, range(half, len(data)), size, window),
        total=len(data) - half,
        desc="probe test",
        unit="img",
    ):
        conf += confusion(mask, predict(emb, image.shape[:2]), n)
    return conf


def markdown(report: dict) -> str:
    lines = [f"| metric | {report['mode']} |", "| --- | --- |"]
    for k in ("miou", "miou_known", "miou_unknown", "hm", "pixel_accuracy"):
        lines.append(f"| {k} | {report[k]:.1f} |")
    if report.get("kmeans_runs"):
        runs = ", ".join(f"{v:.1f}" for v in report["kmeans_runs"])
        lines.append(f"| miou of each k-means run | {runs} |")
    lines += ["", "| class | IoU | split |", "| --- | --- | --- |"]
    for c, v in report["per_class"].items():
        split = "unknown" if c in report["unknown_classes"] else "known"
        lines.append(f"| {c} | {'-' if v is None else f'{v:.1f}'} | {split} |")
    return "\n".join(lines)


def single_markdown(r: dict) -> str:
    lines = ["| query | mIoU | known | unknown |", "| --- | --- | --- | --- |"]
    for key, name in (
        ("single", "one class alone"),
        ("all_names_same_images", "all names"),
        ("pair", "two classes"),
        ("all_names_pair_images", "all names (pairs)"),
    ):
        v = r[key]
        lines.append(f"| {name} | {v['miou']:.1f} | {v['known']:.1f} | {v['unknown']:.1f} |")
    x = r["ratio"]
    lines += ["", f"one alone / all names: {x['miou']:.2f} (known {x['known']:.2f}, unknown "
              f"{x['unknown']:.2f}); an absent class asked alone labels {r['absent_share']:.1f} % "
              f"of the pixels ({r['absent_queries']} queries)"]  # fmt: skip
    return "\n".join(lines)


def evaluate(
    model,
    data_dir,
    mode="language",
    unknown=None,
    size=None,
    templates=None,
    limit=None,
    image_set=None,
    threads=None,
    window="default",
    window_stride=None,
    kmeans_runs=KMEANS_RUNS,
    providers=None,
) -> dict:
    """Run one evaluation; returns the report dict (see ``train.evaluate.metrics.summarize``).
    ``threads``: CPU threads of the runtime (default: onnxruntime's choice); ``window``,
    ``window_stride``: sliding-window inference as in ``Segmenter.run`` (default: the
    bundle's; None = whole image); ``providers``: as ``Segmenter``'s (default: the GPU
    ones where onnxruntime-gpu sees them, then the CPU)."""
    data = VOCFolder(data_dir, image_set=image_set, limit=limit)
    seg = clips4rt.Segmenter(model, threads=threads, providers=providers)
    classes = data.classes
    if unknown is None:
        unknown = list(data.split.get("unknown", []))
    missing = [u for u in unknown if u not in classes]
    if missing:
        raise ValueError(f"--unknown-classes {missing} are not in {data.root}/classes.txt")
    win = {"window": window, "window_stride": window_stride}
    resolved = seg.window_setting(window, window_stride)  # checked before the first image
    if mode == "language":
        conf = eval_language(seg, data, classes, size, templates, window=win)
    elif mode == "unsupervised":
        per_run = eval_unsupervised(seg, data, len(classes), size, window=win,
                                    runs=kmeans_runs)  # fmt: skip
        conf = per_run.sum(0)
    elif mode == "probe":
        conf = eval_probe(seg, data, len(classes), size, window=win)
    elif mode == "single-class":
        from train.evaluate.single import eval_single_class

        report = eval_single_class(seg, data, classes, unknown, size, templates, window=win)
    else:
        raise ValueError(f"unknown --mode {mode!r}: language, unsupervised, probe or "
                         "single-class")  # fmt: skip
    if mode != "single-class":
        report = summarize(conf, classes, unknown)
    if mode == "unsupervised":
        report["kmeans_runs"] = [summarize(c, classes, unknown)["miou"] for c in per_run]
    report.update(
        mode=mode,
        model=str(model),
        data=str(data_dir),
        images=len(data),
        unknown_classes=list(unknown),
        kind=seg.info.kind,
        input_size=int(size or seg.info.input_size),
        window=list(resolved) if resolved else None,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="bundle image graph (model.onnx)")
    p.add_argument("--data", required=True, help="VOC-style folder")
    p.add_argument("--mode", default="language",
                   choices=("language", "unsupervised", "probe", "single-class"))  # fmt: skip
    p.add_argument("--unknown-classes", help="comma-separated; default: the folder's split.json")
    p.add_argument("--size", type=int, help="short side images are resized to (default: bundle)")
    p.add_argument("--templates", choices=("bundle", "simple"), default="bundle")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--image-set", help="ImageSets/Segmentation/<name>.txt to evaluate")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--threads", type=int, help="CPU threads (default: onnxruntime's choice)")
    p.add_argument("--window", type=int, help="sliding-window inference: crop size in pixels "
                   "of the working size (0 = whole image; default: the bundle's)")  # fmt: skip
    p.add_argument("--window-stride", type=int, help="pixels between windows (default: half)")
    p.add_argument("--kmeans-runs", type=int, default=KMEANS_RUNS,
                   help="unsupervised mode: clusterings from successive seeds, scored pooled "
                   f"(default {KMEANS_RUNS}; 1 = the protocol before 2026-12-04)")  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.kmeans_runs <= MAX_KMEANS_RUNS:
        p.error(f"--kmeans-runs must be in [1, {MAX_KMEANS_RUNS}], got {args.kmeans_runs}")
    unknown = None
    if args.unknown_classes is not None:
        unknown = [c.strip() for c in args.unknown_classes.split(",") if c.strip()]
    templates = ["a photo of a {}."] if args.templates == "simple" else None
    try:
        report = evaluate(
            args.model,
            args.data,
            args.mode,
            unknown,
            args.size,
            templates,
            args.limit,
            args.image_set,
            args.threads,
            "default" if args.window is None else (args.window or None),
            args.window_stride,
            args.kmeans_runs,
        )
    except (ValueError, FileNotFoundError, clips4rt.BundleError, clips4rt.ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(report) if args.mode != "single-class" else single_markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
