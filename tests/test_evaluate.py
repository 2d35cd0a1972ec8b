"""train.evaluate end to end on a tiny bundle and a tiny toy folder, and its errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("scipy")

import clips4rt  # noqa: E402
from train import evaluate as ev  # noqa: E402
from train.evaluate.metrics import confusion, summarize  # noqa: E402
from train.toyworld import write_dataset  # noqa: E402


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("toy") / "val", seed=9, count=6, size=64)


@pytest.mark.parametrize("mode", ["language", "unsupervised", "probe"])
def test_modes_report(bundles, toy_dir, mode, tmp_path):
    out = tmp_path / "r.json"
    assert (
        ev.main(
            [
                "--model",
                str(bundles["maskclip"]),
                "--data",
                str(toy_dir),
                "--mode",
                mode,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for k in ("miou", "miou_known", "miou_unknown", "per_class", "hm", "pixel_accuracy"):
        assert k in r
    assert r["mode"] == mode and r["images"] == 6 and len(r["per_class"]) == 20
    assert 0 <= r["miou"] <= 100 and 0 <= r["pixel_accuracy"] <= 100
    assert r["unknown_classes"] == ["snow", "star", "fish", "car", "kite"]
    if mode == "unsupervised":  # five k-means runs by default, each one's mIoU reported
        assert len(r["kmeans_runs"]) == 5 and all(0 <= v <= 100 for v in r["kmeans_runs"])
        for bad in ("0", "101"):
            with pytest.raises(SystemExit) as e:
                ev.main(["--model", "m.onnx", "--data", "d", "--mode", mode, "--kmeans-runs", bad])
            assert e.value.code == 2


def test_language_mode_equals_segmenter_runs(bundles, toy_dir):
    """The report is the metric of what Segmenter.run returns (no hidden post-processing)."""
    from train.evaluate.voc import VOCFolder

    data = VOCFolder(toy_dir)
    seg = clips4rt.Segmenter(bundles["sclip"])
    conf = np.zeros((20, 21), np.int64)
    for i in range(len(data)):
        image, mask = data.load(i)
        r = seg.run(image, data.classes, threshold=0, background=[], negatives=False)
        conf += confusion(mask, r.labels, 20)
    want = summarize(conf, data.classes, ["snow", "star", "fish", "car", "kite"])
    got = ev.evaluate(bundles["sclip"], toy_dir)
    assert got["miou"] == pytest.approx(want["miou"])
    assert got["per_class"] == pytest.approx(want["per_class"])


def test_unknown_classes_flag(bundles, toy_dir):
    r = ev.evaluate(bundles["maskclip"], toy_dir, unknown=["sky", "ball"], limit=2)
    assert r["unknown_classes"] == ["sky", "ball"] and r["images"] == 2
    with pytest.raises(ValueError, match="not in .*classes.txt"):
        ev.evaluate(bundles["maskclip"], toy_dir, unknown=["unicorn"])


def _copy(toy_dir, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(toy_dir, dst)
    return dst


def test_bad_folders(bundles, toy_dir, tmp_path, capsys):
    model = str(bundles["maskclip"])
    d = _copy(toy_dir, tmp_path)
    first = sorted((d / "SegmentationClass").glob("*.png"))[0]
    first.unlink()
    assert ev.main(["--model", model, "--data", str(d)]) == 2
    assert f"mask missing for {first.stem}.jpg" in capsys.readouterr().err

    d = _copy(toy_dir, tmp_path / "b")
    first = sorted((d / "SegmentationClass").glob("*.png"))[0]
    Image.open(first).resize((32, 32)).save(first)
    assert ev.main(["--model", model, "--data", str(d)]) == 2
    assert f"{first.name}: mask is (32, 32) but image" in capsys.readouterr().err

    d = _copy(toy_dir, tmp_path / "c")
    first = sorted((d / "SegmentationClass").glob("*.png"))[0]
    m = np.asarray(Image.open(first)).copy()
    m[0, 0] = 42
    Image.fromarray(m, mode="L").save(first)
    assert ev.main(["--model", model, "--data", str(d)]) == 2
    assert "labels [42] are outside classes.txt" in capsys.readouterr().err

    empty = tmp_path / "empty"
    (empty / "JPEGImages").mkdir(parents=True)
    (empty / "classes.txt").write_text("a\nb\n")
    assert ev.main(["--model", model, "--data", str(empty)]) == 2
    assert "no images in" in capsys.readouterr().err
    assert ev.main(["--model", model, "--data", str(tmp_path / "nowhere")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    (empty / "classes.txt").unlink()
    assert ev.main(["--model", model, "--data", str(empty)]) == 2
    assert "classes.txt is missing" in capsys.readouterr().err
