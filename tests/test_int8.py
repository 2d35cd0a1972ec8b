"""int8 bundles (train.export --int8): calibration, refusal of bad input, the layers
kept in float, and the runtime's handling of them. Needs the export stack (torch,
onnx); the torch-free deployment tests are in test_device.py."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt.errors import BundleError
from tests.test_device import _frames

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from train.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("calib"), seed=4000, count=12, size=96) / (
        "JPEGImages"
    )


@pytest.fixture()
def export(tmp_path, tiny_config):
    def run(*extra):
        from train.export import main

        out = tmp_path / "m.onnx"
        args = ["--model-config", str(tiny_config), "--dense", "sclip", "-o", str(out)]
        return main([*args, *extra]), out

    return run


def test_int8_export_of_a_dense_clip(export, calib, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out = export("--int8", "--calibration", str(calib))
    assert rc == 0
    text = capsys.readouterr().out
    assert "int8 image graph: pixel-embedding cosine" in text
    seg = clips4rt.Segmenter(out)
    assert seg.info.precision == "int8"
    q = seg.info.provenance["int8"]
    assert q["cosine_mean"] >= 0.98 and q["cosine_p1"] >= 0.90 and q["calibration_images"] == 9
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert seg.run(_frames(1)[0], ["sky", "ball"]).labels.shape == (180, 320)
    from clips4rt.cli import main as cli

    assert cli(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"


def test_int8_bad_input(export, tmp_path, calib, capsys):
    rc, _ = export("--int8", "--fp16-weights", "--calibration", str(calib))
    assert rc == 2 and "choose one" in capsys.readouterr().err
    rc, _ = export("--int8")
    assert rc == 2 and "needs --calibration" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out = export("--int8", "--calibration", str(tmp_path / "junk"))
    assert rc == 1 and "1 image files" in capsys.readouterr().err and not out.exists()
    with pytest.warns(UserWarning, match="fewer than the --calibration-count 50"):
        rc, out = export("--int8", "--calibration", str(calib),
                          "--calibration-count", "50")  # fmt: skip
    assert rc == 0 and clips4rt.Segmenter(out).info.provenance["int8"]["calibration_images"] == 9
    mixed = tmp_path / "mixed"  # sizes and aspect ratios differ: each its own working size
    mixed.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((40, 90), (120, 64), (64, 64), (300, 200)) * 2):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(mixed / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out = export("--int8", "--calibration", str(mixed))
    assert rc == 0 and clips4rt.Segmenter(out).info.precision == "int8"


def test_int8_calibration_is_checked_before_export_and_failures_leave_nothing(
    export, tmp_path, calib, capsys, monkeypatch
):
    """Black frames used to pass the gate (measured on more black frames) and a failed
    quantization left the float bundle under the int8 bundle's name."""
    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(black / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out = export("--int8", "--calibration", str(black))
    err = capsys.readouterr().err
    assert rc == 1 and "near-constant" in err and "0 usable images" in err
    assert list(tmp_path.iterdir()) == [black]  # no bundle, no staging folder
    few = tmp_path / "few"
    few.mkdir()
    for i in range(4):
        (few / f"{i}.jpg").write_bytes((calib / sorted(os.listdir(calib))[i]).read_bytes())
    import clips4rt.export.clip_loader as loader

    monkeypatch.setattr(loader, "load_clip", lambda *a, **k: pytest.fail("exported first"))
    rc, out = export("--int8", "--calibration", str(few))
    assert rc == 1 and "at least 8" in capsys.readouterr().err and not out.exists()
    monkeypatch.undo()
    import clips4rt.export.quantize as Q

    def fails(*a, **k):
        raise RuntimeError("int8 parity stays under the bound")

    monkeypatch.setattr(Q, "quantize_image_graph", fails)
    rc, out = export("--int8", "--calibration", str(calib))
    assert rc == 1 and "stays under the bound" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["black", "few"]


def test_sensitive_layers_stay_float_or_the_export_fails(export, tmp_path, calib):
    import shutil

    from clips4rt.export.quantize import calibration_frames, quantize_image_graph

    rc, out = export()
    assert rc == 0
    floats = tmp_path / "float.onnx"
    shutil.copy(out, floats)
    frames = calibration_frames(calib, 12, clips4rt.Segmenter(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loose = quantize_image_graph(out, frames)
        assert loose["float_layers"] == []
        shutil.copy(floats, out)  # the same float graph again
        tight = quantize_image_graph(out, frames, min_mean=loose["cosine_mean"] + 1e-5,
                                     min_p1=0.0)  # fmt: skip
        assert tight["float_layers"] and tight["cosine_mean"] > loose["cosine_mean"]
        shutil.copy(floats, out)
        with pytest.raises(RuntimeError, match="stays under the bound"):
            quantize_image_graph(out, frames, min_mean=1.01)


def test_int8_bundles_refuse_the_cuda_provider(export, calib, monkeypatch):
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out = export("--int8", "--calibration", str(calib))
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that CUDA is missing, falls back
        try:
            clips4rt.Segmenter(out, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        except BundleError as e:
            assert "int8 bundle" in str(e) and "CPUExecutionProvider" in str(e)
        else:
            pytest.fail("an int8 bundle on CUDA was accepted")


def test_int8_export_of_a_clips4_student(tmp_path, calib, capsys):
    pytest.importorskip("open_clip")
    from train.export import main
    from train.method.config import load_config
    from train.method.loop import train

    tiny = ["--toy_pool=6", "--batch=2", "--image_size=64", "--teacher_size=96",
            "--segments=4", "--unknown_prototypes=2", "--warmup=1", "--steps=1"]  # fmt: skip
    last = train(load_config("toy", [*tiny, f"--out={tmp_path / 'run'}"]))
    out = tmp_path / "s.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["--checkpoint", str(last), "-o", str(out), "--int8", "--calibration",
                   str(calib), "--calibration-count", "8"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    seg = clips4rt.Segmenter(out)
    assert seg.info.kind == "clip-s4" and seg.info.precision == "int8"
    assert seg.info.provenance["int8"]["calibration_images"] == 6
    assert seg.run(_frames(1)[0], ["sky", "ball"]).labels.shape == (180, 320)
