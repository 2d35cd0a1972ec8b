"""Synonyms (a class with several names) and the logit scale at run time."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest

import clips4rt
from clips4rt.vocab import read_classes_file, vocabulary

SYN = {"water": ["water", "sea"], "land": ["grass", "sand", "brick wall"], "sky": ["sky"],
       "thing": ["car", "tree", "ball"]}  # fmt: skip
FLAT = [n for names in SYN.values() for n in names]
OWNER = [k for k, names in enumerate(SYN.values()) for _ in names]


@pytest.fixture(scope="module")
def toy():
    return clips4rt.Segmenter()


@pytest.fixture(scope="module")
def scene():
    from importlib import resources

    from clips4rt.images import load_image

    return load_image(str(resources.files("clips4rt") / "data" / "demo_scene.png"))


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_synonym_labels_are_the_flat_query_mapped_by_name(toy, scene, threshold):
    syn = toy.run(scene, SYN, threshold=threshold)
    flat = toy.run(scene, FLAT, threshold=threshold)
    lut = np.array(OWNER + [-1])
    np.testing.assert_array_equal(syn.labels, lut[flat.labels])
    assert syn.classes == list(SYN)
    # the score is the winning name's probability over all names (the official rule)
    np.testing.assert_allclose(syn.scores, flat.scores)
    assert len(np.unique(flat.labels)) > len(np.unique(syn.labels)) > 1  # names merged
    if threshold:
        assert (syn.labels == -1).any()
    for got in (toy.run_batch([scene], SYN, threshold=threshold)[0],
                next(iter(toy.stream([scene], SYN, threshold=threshold)))):  # fmt: skip
        np.testing.assert_array_equal(got.labels, syn.labels)


def test_synonym_queries_are_remembered_but_never_stale(toy, scene):
    a = toy.run(scene, {"x": ["sky", "grass"], "y": ["car"]}, negatives=False)
    b = toy.run(scene, {"x": ["sky"], "y": ["car", "grass"]}, negatives=False)
    assert (a.labels != b.labels).any()
    again = toy.run(scene, {"x": ["sky", "grass"], "y": ["car"]}, negatives=False)
    np.testing.assert_array_equal(again.labels, a.labels)


def test_bad_vocabularies_are_refused():
    with pytest.raises(TypeError, match="list of names"):
        vocabulary({"car": "car"})
    with pytest.raises(TypeError, match="list of names"):
        vocabulary({"car": None})
    with pytest.raises(ValueError, match="no names"):
        vocabulary({"car": []})
    with pytest.raises(ValueError, match="belongs to one class"):
        vocabulary({"car": ["car", "auto"], "truck": ["auto"]})
    with pytest.raises(TypeError, match="strings"):
        vocabulary({1: ["car"]})
    with pytest.raises(TypeError, match="strings"):
        vocabulary({"car": ["car", 3]})
    with pytest.raises(TypeError, match="not a set"):
        vocabulary({"car", "dog"})
    v = vocabulary({"car": ["car"], "dog": ["dog"]})
    assert v.owner is None and v.classes == ["car", "dog"]


def test_classes_file(tmp_path, toy, scene, capsys):
    f = tmp_path / "classes.txt"
    f.write_text(
        "# my classes\nwater | sea\n\nland|grass|sand|brick wall\nsky\nthing|car|tree|ball\n"
    )
    got = read_classes_file(f)
    assert got == {"water": ["water", "sea"], "land": ["land", "grass", "sand", "brick wall"],
                   "sky": ["sky"], "thing": ["thing", "car", "tree", "ball"]}  # fmt: skip
    for text, match in (("a||b\n", "empty name"), ("a|x\na|b\n", ":2: class 'a' is given twice"),
                        ("# only\n", "no class")):  # fmt: skip
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_classes_file(f)
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="UTF-8"):
        read_classes_file(f)
    # the documented bound, 1 MiB: a file of exactly that is read whole, one byte more is
    # refused before reading; a FIFO is refused at once (it would block a plain read)
    pad = "#" * (2**20 - len("sky\nstar\n") - 1) + "\n"
    f.write_text(pad + "sky\nstar\n")
    assert f.stat().st_size == 2**20 and read_classes_file(f) == {"sky": ["sky"], "star": ["star"]}
    f.write_text(pad + "sky\nstars\n")
    with pytest.raises(ValueError, match="over 1048576 bytes"):
        read_classes_file(f)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    caught = []

    def read_fifo():  # in a thread: a regression would block on open, not hang the suite
        try:
            read_classes_file(fifo)
        except ValueError as e:
            caught.append(str(e))

    t = threading.Thread(target=read_fifo, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and "not a regular file" in caught[0]
    f.write_text("sky\nland|grass|sand\n")
    from clips4rt.cli import main

    assert main(["segment", str(_png(tmp_path, scene)), "--classes-file", str(f), "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "land" in out and "grass" not in out.split(":", 1)[1].split("->")[0]
    assert main(["segment", str(tmp_path / "s.png"), "--out", str(tmp_path / "o")]) == 2
    assert "--classes-file" in capsys.readouterr().err


def _png(tmp_path, scene):
    from PIL import Image

    Image.fromarray(scene).save(tmp_path / "s.png")
    return tmp_path / "s.png"


def test_logit_scale_changes_probabilities_never_labels(toy, scene):
    classes = ["sky", "grass", "water", "sand", "car", "pyramid"]
    base = toy.run(scene, classes, threshold=0)
    assert math.isclose(float(toy.info.logit_scale), toy._query(classes).logit_scale)
    for scale in (1.0, 40.0, 250.0):
        r = toy.run(scene, classes, threshold=0, logit_scale=scale)
        np.testing.assert_array_equal(r.labels, base.labels)
        np.testing.assert_allclose(r.similarity, base.similarity)
        # the winner's probability is 1 / sum_k exp(scale * (cos_k - cos_max))
    soft = toy.run(scene, classes, threshold=0, logit_scale=1.0).scores
    sharp = toy.run(scene, classes, threshold=0, logit_scale=250.0).scores
    assert soft.max() < 0.5 < sharp.mean()
    assert (soft <= 1 / len(classes) * math.e**2).all()  # cosines differ by at most 2
    kept_soft = toy.run(scene, classes, threshold=0.4, logit_scale=10.0).labels >= 0
    kept_sharp = toy.run(scene, classes, threshold=0.4, logit_scale=250.0).labels >= 0
    assert kept_soft.mean() < kept_sharp.mean()
    for bad in (0, -1.0, float("nan"), float("inf"), 1e9, True, "40"):
        with pytest.raises(ValueError, match="logit_scale"):
            toy.run(scene, classes, logit_scale=bad)


def test_export_logit_scale(tmp_path, tiny_clip):
    from train.export import export_dense_clip

    model, name, mean, std = tiny_clip
    info, _ = export_dense_clip(model, name, None, mean, std, "maskclip", tmp_path / "m.onnx",
                                templates="simple", logit_scale=50.0)  # fmt: skip
    assert info.logit_scale == 50.0
    assert clips4rt.Segmenter(tmp_path / "m.onnx").info.logit_scale == 50.0
    with pytest.raises(ValueError, match="logit_scale"):
        export_dense_clip(model, name, None, mean, std, "maskclip", tmp_path / "n.onnx",
                          logit_scale=float("nan"))  # fmt: skip
