"""Segmenter.discover: class-free segments (spherical k-means of the pixel embeddings,
k by the best silhouette) and their names from a vocabulary."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import clips4rt
from clips4rt import discover as D
from clips4rt.cli import main

scipy_optimize = pytest.importorskip("scipy.optimize")


@pytest.fixture(scope="module")
def seg():
    return clips4rt.Segmenter(threads=2)


def _silhouette_reference(x, ids):
    """The textbook definition, point by point (cosine distance)."""
    d = 1.0 - x @ x.T
    out = []
    for i in range(len(x)):
        own = ids == ids[i]
        if own.sum() == 1:
            out.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, ids == j].mean() for j in np.unique(ids) if j != ids[i])
        out.append((b - a) / max(a, b))
    return float(np.mean(out))


def _blobs(rng, k, n=40, d=16, spread=0.15):
    centres = D._unit(rng.normal(size=(k, d)))
    x = np.concatenate([centres[j] + spread * rng.normal(size=(n, d)) for j in range(k)])
    return D._unit(x), np.repeat(np.arange(k), n)


def test_silhouette_and_the_rule_for_k(rng):
    x, truth = _blobs(rng, 3)
    for ids in (truth, rng.integers(0, 4, len(x))):
        assert D.silhouette(x, ids) == pytest.approx(_silhouette_reference(x, ids), abs=1e-9)
    ids, s = D.choose_k(x, 8, 0, D.MIN_SILHOUETTE)
    assert len(np.unique(ids)) == 3 and s > 0.5  # three blobs: k = 3
    perms = itertools.permutations(range(3))
    agree = max(np.mean(ids == np.array(p)[truth]) for p in perms)
    assert agree == 1.0
    one = D._unit(rng.normal(size=(60, 16)) * 0.01 + 1.0)  # no structure: one segment
    ids, s = D.choose_k(one, 8, 0, D.MIN_SILHOUETTE)
    assert (ids == 0).all() and np.isnan(s)


def test_kmeans_reaches_a_fixed_point(rng):
    x, _ = _blobs(rng, 4, spread=0.8)  # overlapping: seeds alone are not the answer
    for k in (2, 4, 6):
        ids = D.kmeans(x, k, seed=3)
        centres = D._unit(np.stack([x[ids == j].sum(0) for j in range(k)]))
        assert np.array_equal(np.argmax(x @ centres.T, axis=1), ids)  # Lloyd converged


def test_discover_finds_the_toy_scenes_regions(seg):
    from train.toyworld import make_scene
    from train.toyworld.world import CLASSES

    ious, hits = [], []
    for i in range(12):  # held-out seed
        scene = make_scene(3001, i, 192)
        d = seg.discover(scene.image, vocabulary=list(CLASSES))
        gt = scene.mask.astype(int)
        classes = np.unique(gt)
        iou = np.array([[((gt == c) & (d.labels == j)).sum() / ((gt == c) | (d.labels == j)).sum()
                         for j in range(d.k)] for c in classes])  # fmt: skip
        rows, cols = scipy_optimize.linear_sum_assignment(iou, maximize=True)
        ious.append(iou[rows, cols].sum() / len(classes))
        for j, s in enumerate(d.segments):
            if s.share > 0.05:
                hits.append(CLASSES[np.bincount(gt[d.labels == j]).argmax()] == s.name)
        assert sorted(np.unique(d.labels)) == list(range(d.k))
        assert sum(s.share for s in d.segments) == pytest.approx(1.0)
        for j, s in enumerate(d.segments):  # each segment's numbers are its own pixels'
            assert s.share == pytest.approx(float((d.labels == j).mean()))
        assert [s.share for s in d.segments] == sorted((s.share for s in d.segments), reverse=True)
    # measured 0.57 matched IoU on seed 3000 (random labels of the same k: ~0.2)
    assert np.mean(ious) >= 0.45, np.mean(ious)
    assert np.mean(hits) >= 0.45, np.mean(hits)  # the segment's top name is its main class


def test_discover_k_seed_names_and_bad_arguments(seg):
    from train.toyworld import make_scene

    image = make_scene(3001, 0, 160).image
    a = seg.discover(image, k=4, seed=1)
    assert a.k == 4 and np.array_equal(a.labels, seg.discover(image, k=4, seed=1).labels)
    vocab = ["sky", "grass", "water", "car"]
    d = seg.discover(image, k=3, vocabulary=vocab, top=2)
    protos = seg.text_embeddings(vocab)
    for s, c in zip(d.segments, d.centroids):
        cos = protos @ c
        assert [n for n, _, _ in s.names] == [vocab[j] for j in np.argsort(-cos)[:2]]
        assert s.names[0][1] == pytest.approx(float(cos.max()), abs=1e-5)
        a_, b_ = seg.info.score_scale, seg.info.score_bias
        if a_:
            assert s.names[0][2] == pytest.approx(1 / (1 + np.exp(-(a_ * cos.max() + b_))))
    assert d.overlay().size == (160, 160)
    plain = seg.discover(np.full((160, 160, 3), 128, np.uint8))  # nothing to split
    assert plain.k == 1 and (plain.labels == 0).all() and plain.segments[0].share == 1.0
    assert json.loads(json.dumps(d.to_dict()))["k"] == 3
    for bad in ({"k": 0}, {"max_k": 1}, {"top": 0}, {"vocabulary": []}):
        with pytest.raises(ValueError):
            seg.discover(image, **bad)


def test_cli_discover(tmp_path, capsys):
    from importlib import resources

    scene = str(resources.files("clips4rt") / "data" / "demo_scene.png")
    out = tmp_path / "out"
    assert main(["segment", scene, "--discover", "--vocabulary", "sky,grass,car,pyramid",
                 "--out", str(out)]) == 0  # fmt: skip
    got = json.loads((out / "demo_scene_segments.json").read_text())
    assert got["k"] >= 2 and got["segments"][0]["names"]
    assert (out / "demo_scene_segments.png").is_file() and (
        out / "demo_scene_overlay.png"
    ).is_file()
    assert main(["segment", scene, "--discover", "--classes", "sky", "--out", str(out)]) == 2
    assert "--discover finds segments without classes" in capsys.readouterr().err
