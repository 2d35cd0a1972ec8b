"""Edge and accelerator deployment, tested on the CPU provider: post-processing inside
onnxruntime (clips4rt.device, models/match.onnx) against the C++ path, and TensorRT
settings. Torch-free: int8 bundles, which need the export stack, are in test_int8.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt import device as DV
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
            np.testing.assert_allclose(b.scores, a.scores, atol=2e-5)  # probabilities, ORT graph vs
            # C++ float32 (measured 1.3e-6)
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
