"""Edge and accelerator deployment, tested on the CPU provider: post-processing inside
onnxruntime (clips4rt.device, models/match.onnx) against the C++ path, TensorRT
settings, and int8 bundles (train.export --int8)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt import device as DV
from clips4rt.errors import BundleError
from clips4rt.kernels import match_upsample


def _frames(n=4, size=(180, 320)):
    from train.toyworld import make_scene

    return [
        np.asarray(Image.fromarray(make_scene(3000, i).image).resize(size[::-1], Image.BILINEAR))
        for i in range(n)
    ]


CLASSES = ["sky", "grass", "water", "sand", "brick wall", "snow", "ball", "star", "tree", "car"]


def test_graph_postprocessing_equals_the_cpp_path():
    cpu = clips4rt.Segmenter(threads=2)
    graph = clips4rt.Segmenter(threads=2, postprocess="graph")
    assert (cpu.postprocess, graph.postprocess) == ("cpu", "graph")
    same = total = 0
    for frame in _frames():
        for threshold, background in ((0.0, None), (0.4, ["sand"])):
            a = cpu.run(frame, CLASSES[:-1], threshold=threshold, background=background)
            b = graph.run(frame, CLASSES[:-1], threshold=threshold, background=background)
            same += int((a.labels == b.labels).sum())
            total += a.labels.size
            assert b.labels.dtype == np.int32 and b.labels.shape == frame.shape[:2]
            np.testing.assert_allclose(b.similarity, a.similarity, atol=2e-5)
            np.testing.assert_allclose(b.scores, a.scores, atol=2e-4)
            if threshold:
                assert (b.labels == -1).any()
    assert same / total >= 0.9999, same / total
    frames = _frames(3)
    batch = graph.run_batch([frames[0], frames[1][:100]], CLASSES)
    assert batch[1].labels.shape == (100, 320)
    streamed = list(graph.stream(frames, CLASSES))
    for f, r in zip(frames, streamed):
        assert np.array_equal(r.labels, graph.run(f, CLASSES).labels)


def test_match_graph_on_random_embeddings_and_near_ties():
    """Random unit embeddings (many near-ties at D=16), up- and downsampling: labels differ
    from the float64 oracle only where its two best values are within float32 error."""
    import onnxruntime as ort

    from clips4rt.kernels import match_upsample_reference

    sess = ort.InferenceSession(str(DV.match_graph()), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for D, K, (h, w), (H, W) in ((16, 5, (9, 13), (61, 87)), (64, 21, (12, 16), (7, 9))):
        emb = rng.normal(size=(1, D, h, w)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        protos = rng.normal(size=(K, D)).astype(np.float32)
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        feed = {"embeddings": emb, "prototypes": protos, "size": np.array([H, W], np.int64),
                "logit_scale": np.array(50, np.float32), "n_classes": np.array(K, np.int64),
                "threshold": np.array(0, np.float32)}  # fmt: skip
        labels, scores, probs = sess.run(None, feed)
        ref = match_upsample_reference(emb[0], protos, (H, W), 50.0)
        cpp = match_upsample(emb[0], protos, (H, W), 50.0)
        assert (labels[0] == cpp[0]).mean() >= 0.9999
        # a label off the oracle's only at a near-tie: winner gap g under float32 cosine
        # error (~(D + 8) 2^-24 per side, < 1e-5 here) means prob <= 1 / (1 + e^(-50 g))
        off = labels[0] != ref[0]
        assert (ref[2][off] < 1 / (1 + np.exp(-50 * 1e-5))).all(), ref[2][off]
        np.testing.assert_allclose(scores[0], ref[1], atol=1e-5)
        np.testing.assert_allclose(probs[0], ref[2], atol=1e-4)


def test_the_shipped_match_graph_is_what_the_generator_builds():
    pytest.importorskip("onnx")
    from train.export.postprocess import build

    assert DV.match_graph().read_bytes() == build().SerializeToString(), (
        "clips4rt/models/match.onnx is stale: python -m train.export.postprocess"
    )


def test_postprocess_and_tensorrt_options():
    with pytest.raises(ValueError, match="postprocess must be one of"):
        clips4rt.Segmenter(postprocess="gpu")
    assert DV.device_type(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert DV.device_type(["CPUExecutionProvider"]) == "cpu"


def test_tensorrt_options(tmp_path):
    opts = DV.trt_options(tmp_path / "trt", stride=16, input_size=448)
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert opts["trt_profile_min_shapes"] == "image:1x16x16x3"
    assert opts["trt_profile_opt_shapes"] == "image:1x448x448x3"
    assert opts["trt_profile_max_shapes"] == "image:1x1792x1792x3"  # 4x, a stride multiple
    assert not DV.trt_options(tmp_path, 14, 224, fp16=False, max_side=500)["trt_fp16_enable"]
    windowed = DV.trt_options(tmp_path, 16, 336, opt_side=224)  # a bundle with windows
    assert windowed["trt_profile_opt_shapes"] == "image:1x224x224x3"
    assert windowed["trt_profile_max_shapes"] == "image:1x1344x1344x3"
    assert DV.trt_options(tmp_path, 14, 224, max_side=500)["trt_profile_max_shapes"].endswith(
        "x490x490x3"
    )
    with pytest.raises(ValueError, match="TensorRT profile"):
        DV.trt_options(tmp_path, 16, 448, max_side=100)
    listed = DV.provider_list(["TensorrtExecutionProvider", "CPUExecutionProvider"], opts)
    assert listed == [("TensorrtExecutionProvider", opts), "CPUExecutionProvider"]
    assert DV.provider_list(["CPUExecutionProvider"], opts) == ["CPUExecutionProvider"]


# ---------------------------------------------------------------- int8
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
    import train.models.clip_loader as loader

    monkeypatch.setattr(loader, "load_clip", lambda *a, **k: pytest.fail("exported first"))
    rc, out = export("--int8", "--calibration", str(few))
    assert rc == 1 and "at least 8" in capsys.readouterr().err and not out.exists()
    monkeypatch.undo()
    import train.export.quantize as Q

    def fails(*a, **k):
        raise RuntimeError("int8 parity stays under the bound")

    monkeypatch.setattr(Q, "quantize_image_graph", fails)
    rc, out = export("--int8", "--calibration", str(calib))
    assert rc == 1 and "stays under the bound" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["black", "few"]


def test_sensitive_layers_stay_float_or_the_export_fails(export, tmp_path, calib):
    import shutil

    from train.export.quantize import calibration_frames, quantize_image_graph

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
