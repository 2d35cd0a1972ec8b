"""Sliding-window inference: the official crop rule, the average, every runtime path."""

from __future__ import annotations

import numpy as np
import pytest

import clips4rt
from clips4rt.kernels import match_upsample
from clips4rt.window import check_window, embed_windows, origins

CLASSES = ["sky", "grass", "water", "sand", "car", "tree"]


def _official_starts(n, crop, stride):
    """SCLIP's forward_slide, one axis: (y1, y2) of each crop."""
    grids = max(n - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(grids):
        y1 = i * stride
        y2 = min(y1 + crop, n)
        y1 = max(y2 - crop, 0)
        out.append((y1, y2))
    return out


@pytest.mark.parametrize(
    "n,win,stride", [(336, 224, 112), (448, 224, 112), (500, 224, 112), (100, 224, 112),
                     (96, 32, 8), (104, 48, 24), (48, 48, 24)]
)  # fmt: skip
def test_origins_follow_the_official_rule(n, win, stride):
    ref = sorted({y1 for y1, _ in _official_starts(n, win, stride)})
    assert origins(n, win, stride) == ref
    assert origins(336, 224, 112) == [0, 112]


def test_window_average_equals_the_official_logit_average(rng):
    """embed_windows + cosines = SCLIP's preds/count_mat of per-crop cosine logits, on
    the token grid (a fake graph whose embeddings depend on the crop's position, so
    that any misplaced crop or count shows)."""
    s, D, K = 8, 6, 3
    image = rng.integers(0, 256, (88, 120, 3), dtype=np.uint8)
    protos = rng.normal(size=(K, D)).astype(np.float32)
    calls = []

    def graph(batch):  # (B, h, w, 3) -> (B, D, h/s, w/s), unit vectors
        calls.append(batch.shape)
        b, h, w, _ = batch.shape
        x = batch.reshape(b, h // s, s, w // s, s, 3).mean((2, 4)).astype(np.float32)
        feats = np.concatenate([x, x[..., :2] ** 2 / 255, np.cumsum(x[..., :1], 2)], -1)
        feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
        return feats.transpose(0, 3, 1, 2).copy()

    emb = embed_windows(graph, image, 48, 24, s)
    assert max(c[0] for c in calls) > 1  # crops batched
    calls.clear()
    np.testing.assert_array_equal(embed_windows(graph, image, 48, 24, s, batch=1), emb)
    assert all(c[0] == 1 for c in calls)  # one crop a run (TensorRT's profile)
    ours = np.einsum("kd,dhw->khw", protos, emb)
    preds = np.zeros((K, 88 // s, 120 // s))
    count = np.zeros((88 // s, 120 // s))
    for y1, y2 in _official_starts(88, 48, 24):
        for x1, x2 in _official_starts(120, 48, 24):
            crop = graph(image[None, y1:y2, x1:x2])[0]
            preds[:, y1 // s : y2 // s, x1 // s : x2 // s] += np.einsum("kd,dhw->khw", protos,
                                                                        crop)  # fmt: skip
            count[y1 // s : y2 // s, x1 // s : x2 // s] += 1
    np.testing.assert_allclose(ours, preds / count, atol=1e-5)
    assert all(c[1:3] == (48, 48) for c in calls)


def test_check_window_errors():
    assert check_window(None, None, 8) is None and check_window(0, None, 8) is None
    assert check_window(96, None, 8) == (96, 48)
    assert check_window(40, None, 8) == (40, 16)  # half, down to the stride
    assert check_window(8, None, 8) == (8, 8)
    for bad in (12, -8, 4, True, 96.0, "96", 16384):
        with pytest.raises(ValueError, match="window must be"):
            check_window(bad, None, 8)
    for bad in (12, 104, -8, 4.0):
        with pytest.raises(ValueError, match="window_stride must be"):
            check_window(96, bad, 8)
    with pytest.raises(ValueError, match="needs a window"):
        check_window(None, 16, 8)


@pytest.fixture(scope="module")
def toy():
    return clips4rt.Segmenter()


def test_run_with_windows_equals_the_windowed_embeddings(toy, rng):
    img = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    s = toy.info.stride
    win = 4 * s
    r = toy.run(img, CLASSES, window=win, threshold=0.3, negatives=False)
    hh, ww = toy.working_size(120, 200)
    from clips4rt.kernels import resize_rgb

    emb = embed_windows(toy.embed, resize_rgb(img, (hh, ww)), win, win // 2, s)
    protos = toy.text_embeddings(CLASSES)
    labels, sims, probs = match_upsample(emb, protos, (120, 200), toy.info.logit_scale,
                                         n_classes=len(CLASSES), threshold=0.3)  # fmt: skip
    np.testing.assert_array_equal(r.labels, labels)
    np.testing.assert_allclose(r.scores, probs, atol=1e-6)  # exact here; numpy vs C++ (ulps)
    np.testing.assert_allclose(toy.embed_image(img, window=win), emb, atol=1e-6)
    whole = toy.run(img, CLASSES, threshold=0.3, negatives=False)
    assert (whole.labels != r.labels).mean() > 0.01  # windows change the answer
    # a window covering the working size is one crop: the whole-image result
    big = toy.run(img, CLASSES, window=(max(hh, ww) // s + 1) * s, threshold=0.3,
                  negatives=False)  # fmt: skip
    np.testing.assert_array_equal(big.labels, whole.labels)


def test_windows_in_batch_stream_and_the_graph_matcher(toy, rng):
    frames = [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8) for _ in range(3)]
    frames.append(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8))
    opts = dict(window=4 * toy.info.stride, window_stride=toy.info.stride * 3, threshold=0.2)
    ref = [toy.run(f, CLASSES, **opts) for f in frames]
    for got in (toy.run_batch(frames, CLASSES, **opts), list(toy.stream(frames, CLASSES, **opts))):
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)  # exact on this CPU; ORT may
            # block a batch of crops differently from one crop (ulps of 1)
    graph = clips4rt.Segmenter(postprocess="graph")
    for f, b in zip(frames, ref):
        a = graph.run(f, CLASSES, **opts)
        agree = (a.labels == b.labels).mean()
        assert agree > 0.999, agree  # float32 in two kernels: only near-ties may differ
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)  # probabilities from two float32
        # implementations (ORT graph, C++): a few ulps of 1 apart (measured 2.8e-7)


def test_window_errors_in_run(toy, rng):
    img = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    s = toy.info.stride
    with pytest.raises(ValueError, match="multiple of the model's stride"):
        toy.run(img, CLASSES, window=s + 1)
    with pytest.raises(ValueError, match="window_stride must be"):
        toy.run(img, CLASSES, window=2 * s, window_stride=4 * s)
    with pytest.raises(ValueError, match="MAX_WINDOWS"):
        toy.run(np.zeros((2000, 2000, 3), np.uint8), CLASSES, window=s, window_stride=s,
                size=1024)  # fmt: skip


def test_export_writes_the_window_default(tmp_path, tiny_clip, rng):
    from train.export import export_dense_clip

    model, name, mean, std = tiny_clip
    info, _ = export_dense_clip(model, name, None, mean, std, "sclip", tmp_path / "w.onnx",
                                templates="simple")  # fmt: skip
    native = max(model.visual.image_size)
    assert (info.window, info.window_stride, info.input_size) == (native, 0, 3 * native // 2)
    seg = clips4rt.Segmenter(tmp_path / "w.onnx")
    assert seg.window_setting() == (native, native // 2)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    default = seg.run(img, ["a", "b", "c"], threshold=0)
    explicit = seg.run(img, ["a", "b", "c"], threshold=0, window=native)
    whole = seg.run(img, ["a", "b", "c"], threshold=0, window=None)
    np.testing.assert_array_equal(default.labels, explicit.labels)
    np.testing.assert_allclose(default.scores, explicit.scores)
    assert not np.allclose(default.scores, whole.scores)
    with pytest.raises(ValueError, match="window"):
        export_dense_clip(model, name, None, mean, std, "sclip", tmp_path / "x.onnx",
                          window=12)  # fmt: skip
    assert not (tmp_path / "x.onnx").exists()
