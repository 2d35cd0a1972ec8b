"""Find X: one or a few classes asked at a time (issue 25): the negative vocabulary,
per-class thresholds, honest summaries."""

from __future__ import annotations

import numpy as np
import pytest

import clips4rt
from clips4rt import background as BG
from clips4rt.cli import _summary, main

pytest.importorskip("torch")

from train import toyworld  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    return clips4rt.Segmenter()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """24 toy scenes of a seed no benchmark uses (5000)."""
    return toyworld.write_dataset(tmp_path_factory.mktemp("findx"), seed=5000, count=24)


def test_one_class_alone_finds_it_and_an_absent_one_stays_background(toy, held_out):
    """Targets of issue 25 on held-out scenes: a class asked alone scores >= 0.9x its IoU
    with every name given (known and unknown classes), an absent class asked alone labels
    <= 5 % of the pixels. Before the negative vocabulary: 0.67x and 100 %."""
    from train.evaluate import evaluate

    r = evaluate(clips4rt.default_model(), held_out, mode="single-class")
    ratio = r["ratio"]
    assert ratio["known"] >= 0.9 and ratio["unknown"] >= 0.9, ratio
    assert r["absent_share"] <= 5.0, r["absent_share"]
    off = _without_negatives(toy, held_out)
    assert off > 50.0, off  # the same query without negatives paints the frame


def _without_negatives(seg, folder) -> float:
    from train.evaluate.voc import VOCFolder

    data = VOCFolder(folder)
    image, mask = data.load(0)
    absent = next(c for k, c in enumerate(data.classes) if not (mask == k).any())
    return 100 * float((seg.run(image, [absent], negatives=False).labels == 0).mean())


def test_all_names_are_unchanged_by_the_negatives(toy):
    """With every class named, every known negative is a query name and is dropped: the
    full-vocabulary answer is the one without negatives."""
    for i in range(3):
        s = toyworld.make_scene(3000, i)
        a = toy.run(s.image, list(toyworld.CLASSES))
        b = toy.run(s.image, list(toyworld.CLASSES), negatives=False)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_negatives_close_to_a_query_name_are_dropped(toy):
    embed = toy.text_embeddings
    assert BG.negatives(["Sand"], ["sand", "sky", "car"], embed, 0.9) == ["sky", "car"]
    assert BG.negatives(["sand"], ["sand"], embed, 0.9) == []
    assert BG.negatives(["sky"], ["grass", "water"], embed, 0.0) == []  # all too close
    scene = toyworld.make_scene(7, 0)
    sand = toyworld.CLASSES.index("sand")
    r = toy.run(scene.image, ["Sand"])  # not beaten by the known class "sand"
    gt = scene.mask == sand
    assert ((r.labels == 0) & gt).sum() / gt.sum() > 0.5


def test_per_class_thresholds(toy):
    scene = toyworld.make_scene(7, 0).image
    q = ["sand", "car", "pyramid"]
    for t in (0.3, 0.6):
        scalar = toy.run(scene, q, threshold=t)
        per = toy.run(scene, q, threshold={c: t for c in q})
        np.testing.assert_array_equal(per.labels, scalar.labels)
    base = toy.run(scene, q, threshold=0.0)
    strict = toy.run(scene, q, threshold={"car": 0.999})
    assert (base.labels == 1).any() and not (strict.labels == 1).any()
    keep = base.labels != 1
    np.testing.assert_array_equal(strict.labels[keep], base.labels[keep])  # others unchanged
    one = toy.run(scene, ["car"], threshold=0.9)  # with one class the threshold now acts
    assert (one.labels == -1).sum() > (toy.run(scene, ["car"]).labels == -1).sum()
    graph = clips4rt.Segmenter(postprocess="graph").run(scene, q, threshold={"car": 0.999})
    assert (graph.labels == strict.labels).mean() > 0.999


def test_bad_find_x_options(toy):
    scene = toyworld.make_scene(7, 0).image
    with pytest.raises(ValueError, match="not classes of this query"):
        toy.run(scene, ["car"], threshold={"bus": 0.5})
    for bad in (float("nan"), 1.5, -0.1, "0.5", None):
        with pytest.raises(ValueError, match="probability"):
            toy.run(scene, ["car"], threshold={"car": bad})
    with pytest.raises(ValueError, match="probability"):
        toy.run(scene, ["car"], threshold=float("inf"))
    with pytest.raises(ValueError, match="name every class"):
        toy.run(scene, ["car", "sky"], negatives=["car", "sky", "sand"])
    with pytest.raises(TypeError, match="negatives must be"):
        toy.run(scene, ["car"], negatives="sand")


def test_cli_summaries_say_what_was_not_found(tmp_path, capsys):
    assert _summary(np.array([[0, 0], [-1, -1]]), ["car", "kite"]) == (
        "car 50.0%; not found: kite; background 50.0%")  # fmt: skip
    from PIL import Image

    Image.fromarray(toyworld.make_scene(7, 0).image).save(tmp_path / "s.png")
    out = str(tmp_path / "o")
    assert main(["segment", str(tmp_path / "s.png"), "--classes", "car,sand", "--threshold",
                 "car=0.6,sand=0.4", "--out", out]) == 0  # fmt: skip
    assert "car " in capsys.readouterr().out
    assert main(["segment", str(tmp_path / "s.png"), "--classes", "car", "--threshold",
                 "car=high", "--out", out]) == 2  # fmt: skip
    assert "class=probability" in capsys.readouterr().err


def test_absolute_scores_do_not_depend_on_what_else_is_asked(toy):
    scene = toyworld.make_scene(7, 0)
    car = toyworld.CLASSES.index("car")
    alone = toy.run(scene.image, ["car"]).probability("car")
    others = toy.run(scene.image, ["sand", "car", "pyramid"], negatives=False)
    np.testing.assert_array_equal(others.probability("car"), alone)
    assert alone[scene.mask == car].mean() > 0.5 > alone[scene.mask != car].mean()
    syn = toy.run(scene.image, {"sand": ["sand"], "vehicle": ["car", "kite"]})  # class 1
    each = np.maximum(alone, toy.run(scene.image, ["kite"]).probability("kite"))
    np.testing.assert_array_equal(syn.probability("vehicle"), each)  # its best name, exactly
    graph = clips4rt.Segmenter(postprocess="graph").run(scene.image, ["car"])
    np.testing.assert_allclose(graph.probability("car"), alone, atol=1e-5)  # exact here; ORT
    # graph vs C++ in float32 (ulps of 1 elsewhere)
    windowed = toy.run(scene.image, ["car"], window=4 * toy.info.stride)
    assert not np.allclose(windowed.probability("car"), alone)  # from the windowed embeddings
    with pytest.raises(KeyError):
        alone_r = toy.run(scene.image, ["car"])
        alone_r.probability("sand")


def test_the_embedded_score_is_calibrated_on_held_out_scenes(toy, held_out):
    """The committed calibration (seed 6000) on other scenes (seed 5000): over (cell,
    class) pairs the expected calibration error is small and beats the softmax's, and
    where the score says > 0.5 the class is there about that often."""
    from train.evaluate.voc import VOCFolder
    from train.export.calibrate import _pairs, ece

    data = VOCFolder(held_out)
    x, y, p = _pairs(toy, data, range(len(data)), toy.text_embeddings(data.classes))
    score = 1 / (1 + np.exp(-(toy.info.score_scale * x + toy.info.score_bias)))
    assert ece(score, y) < 0.01 and ece(score, y) < ece(p, y), (ece(score, y), ece(p, y))
    high = score > 0.5
    assert abs(score[high].mean() - y[high].mean()) < 0.1, (score[high].mean(), y[high].mean())


def test_calibrate_a_bundle(bundles, tmp_path, held_out, capsys):
    import shutil

    from train.export.calibrate import main as calibrate

    r = clips4rt.Segmenter(bundles["maskclip"]).run(np.zeros((32, 32, 3), np.uint8), ["a"])
    with pytest.raises(ValueError, match="train.export.calibrate"):
        r.probability("a")  # an uncalibrated bundle says how to calibrate it
    for f in (clips4rt.default_model(), clips4rt.default_model().with_name("toy.text.onnx")):
        shutil.copy(f, tmp_path / f.name)
    model = tmp_path / "toy.onnx"
    assert calibrate(["--model", str(model), "--data", str(held_out)]) == 0
    assert "expected calibration error" in capsys.readouterr().out
    seg = clips4rt.Segmenter(model)
    assert seg.info.score_scale > 0 and seg.info.provenance["score_calibration"]["images"] == 24
    assert seg.info.score_scale != clips4rt.Segmenter().info.score_scale  # refitted
    p = seg.run(toyworld.make_scene(7, 0).image, ["car"]).probability("car")
    assert ((p >= 0) & (p <= 1)).all()
    random_model = tmp_path / "r.onnx"  # a random CLIP cannot be calibrated: one clear line
    for f in (bundles["maskclip"], bundles["maskclip"].with_name("maskclip.text.onnx")):
        shutil.copy(f, tmp_path / f.name.replace("maskclip.onnx", "r.onnx"))
    assert calibrate(["--model", str(random_model), "--data", str(held_out)]) == 2
    assert calibrate(["--model", str(model), "--data", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_exports_carry_their_negative_vocabulary(tmp_path, tiny_config, capsys):
    from train.export import main as export

    base = ["--model-config", str(tiny_config), "--templates", "simple"]
    assert export([*base, "-o", str(tmp_path / "a.onnx")]) == 0
    assert clips4rt.Segmenter(tmp_path / "a.onnx").info.negative_classes == BG.STUFF_NEGATIVES
    assert export([*base, "-o", str(tmp_path / "b.onnx"), "--negatives", "none"]) == 0
    assert clips4rt.Segmenter(tmp_path / "b.onnx").info.negative_classes == ()
    assert export([*base, "-o", str(tmp_path / "c.onnx"), "--negatives", "wall, floor"]) == 0
    seg = clips4rt.Segmenter(tmp_path / "c.onnx")
    assert seg.info.negative_classes == ("wall", "floor")
    assert BG.candidates(seg.info, True) == ["wall", "floor"]
    assert BG.candidates(clips4rt.Segmenter().info, True) == list(
        clips4rt.Segmenter().info.known_classes)  # a student: its known classes  # fmt: skip
