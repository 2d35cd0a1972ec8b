"""Calibrate a bundle's absolute per-class score on labelled images.

    python -m train.export.calibrate --model model.onnx --data data/toy_val [--limit 200]

``SegmentationResult.probability(name)`` is ``sigmoid(a * cosine + b)``: one scale and
one bias for every class, as SigLIP's score is, fitted by logistic regression (Newton's
method, two parameters) on the pixel embeddings of a VOC-style folder: each labelled
embedding-grid cell against every class name of the folder (its own class a positive,
the others negatives). The first half of the images fits, the second half reports the
calibration (expected calibration error over 10 bins of the score, before: the softmax
probability of the folder's full vocabulary, after: the fitted score) and the two
numbers are written into the bundle's metadata (``score_scale``, ``score_bias``, and
the report under ``provenance.score_calibration``); the graphs are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MAX_SAMPLES = 2_000_000  # (cell, class) pairs kept for the fit


def _pairs(seg, data, indices, protos):
    """(cosine, is-the-class) over labelled cells of the images ``indices``."""
    from PIL import Image

    xs, ys, probs = [], [], []
    for i in indices:
        image, mask = data.load(i)
        emb = seg.embed_image(image)
        d, h, w = emb.shape
        small = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST)).reshape(-1)
        keep = small != 255
        cos = (protos @ emb.reshape(d, -1))[:, keep]  # (K, n)
        y = np.zeros_like(cos, bool)
        y[small[keep], np.arange(keep.sum())] = True
        z = seg.info.logit_scale * (cos - cos.max(0))
        p = np.exp(z) / np.exp(z).sum(0)  # the softmax over every name (the old score)
        xs.append(cos.ravel())
        ys.append(y.ravel())
        probs.append(p.ravel())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(probs)


def fit(x: np.ndarray, y: np.ndarray, steps: int = 100) -> tuple[float, float]:
    """Logistic regression of ``y`` on ``x`` (one feature): (scale, bias), Newton steps
    from (10, -5) until the step is under 1e-8. A weak Gaussian prior (standard deviation
    100 on both) keeps the optimum finite when the data are separable."""
    w = np.array([10.0, -5.0])
    X = np.stack([x.astype(np.float64), np.ones_like(x, np.float64)], 1)
    t = y.astype(np.float64)
    prior = 1.0 / 100.0**2
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -500, 500)))
        grad = X.T @ (p - t) + prior * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + prior * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over score bins of |mean score - frequency| x share."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(float(p[m].mean()) - float(y[m].mean())) * m.mean()
    return total


def calibrate(model, data_dir, limit: int | None = None, seed: int = 0) -> dict:
    """Fit the score on the first half of ``data_dir``, report on the second half, and
    write both into ``model``'s metadata. Returns the report."""
    import onnx

    import clips4rt
    from clips4rt import bundle as B
    from train.evaluate.voc import VOCFolder

    data = VOCFolder(data_dir, limit=limit)
    if len(data) < 4:
        raise ValueError(f"--data {data_dir}: {len(data)} images; give at least 4 (ideally 100+)")
    seg = clips4rt.Segmenter(model)
    protos = seg.text_embeddings(data.classes)
    half = len(data) // 2
    x, y, _ = _pairs(seg, data, range(half), protos)
    if len(x) > MAX_SAMPLES:
        keep = np.random.default_rng(seed).choice(len(x), MAX_SAMPLES, replace=False)
        x, y = x[keep], y[keep]
    if y.all() or not y.any():
        raise ValueError(f"--data {data_dir}: the labels hold one class only; nothing to fit")
    a, b = fit(x, y)
    if not a > 0:
        raise ValueError(f"--data {data_dir}: the fitted score falls with the cosine (scale "
                         f"{a:.3g}): this model does not tell these classes apart")  # fmt: skip
    hx, hy, hp = _pairs(seg, data, range(half, len(data)), protos)
    score = 1.0 / (1.0 + np.exp(-(a * hx + b)))
    report = {
        "scale": a, "bias": b, "images": len(data), "fit_images": half,
        "classes": len(data.classes),
        "ece_softmax": ece(hp, hy), "ece_score": ece(score, hy),
        "data": str(Path(data_dir).name),
    }  # fmt: skip
    m = onnx.load(str(model))
    props = {p.key: p.value for p in m.metadata_props}
    prov = json.loads(props.get(B.PREFIX + "provenance", "{}"))
    prov["score_calibration"] = {k: report[k] for k in ("images", "ece_score", "data")}
    props.update({B.PREFIX + "score_scale": json.dumps(a), B.PREFIX + "score_bias": json.dumps(b),
                  B.PREFIX + "provenance": json.dumps(prov)})  # fmt: skip
    B.BundleInfo.from_metadata(props, str(model))  # what the runtime will accept
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    tmp = Path(model).with_name(f".{Path(model).name}.calibrate.tmp")
    try:
        onnx.save(m, str(tmp))
        tmp.replace(model)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True, help="bundle image graph to calibrate (in place)")
    p.add_argument("--data", required=True, help="VOC-style folder of labelled images")
    p.add_argument("--limit", type=int, help="use the first N images")
    args = p.parse_args(argv)
    try:
        r = calibrate(args.model, args.data, args.limit)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"score = sigmoid({r['scale']:.3f} * cosine + {r['bias']:.3f}), fitted on "
          f"{r['fit_images']} images; on the other {r['images'] - r['fit_images']}: expected "
          f"calibration error {r['ece_score']:.4f} (the softmax probability: "
          f"{r['ece_softmax']:.4f}); written into {args.model}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
