"""Bad input gets a typed error whose message names the problem (and the fix)."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

import clips4rt
from clips4rt import BundleError, ImageError


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    src = bundles["maskclip"]
    for name in (src.name, src.stem + ".text.onnx"):
        shutil.copy(src.with_name(name), tmp_path / name)
    return tmp_path / src.name


def _edit_metadata(path, edit):
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    edit(props)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def seg(bundles):
    return clips4rt.Segmenter(bundles["maskclip"])


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        clips4rt.Segmenter(tmp_path / "nope.onnx")


def test_truncated_model(bundle_copy):
    data = bundle_copy.read_bytes()
    bundle_copy.write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        clips4rt.Segmenter(bundle_copy)


def test_not_onnx(tmp_path):
    (tmp_path / "m.onnx").write_text("hello, I am not a protobuf")
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        clips4rt.Segmenter(tmp_path / "m.onnx")


def test_plain_onnx_without_metadata(bundle_copy):
    _edit_metadata(bundle_copy, lambda p: p.clear())
    with pytest.raises(BundleError, match="no clips4rt metadata"):
        clips4rt.Segmenter(bundle_copy)


def test_unknown_format_version(bundle_copy):
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.format_version": "99"}))
    with pytest.raises(BundleError, match="format version 99"):
        clips4rt.Segmenter(bundle_copy)


def test_metadata_not_json_or_incomplete(bundle_copy):
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.kind": "{oops"}))
    with pytest.raises(BundleError, match="not JSON"):
        clips4rt.Segmenter(bundle_copy)
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.kind": json.dumps("maskclip")}))
    _edit_metadata(bundle_copy, lambda p: p.pop("clips4rt.stride"))
    with pytest.raises(BundleError, match="lacks \\['stride'\\]"):
        clips4rt.Segmenter(bundle_copy)


def test_kind_is_an_open_name(bundle_copy):
    # a dense mode the runtime has never heard of runs: it never branches on the kind
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.kind": json.dumps("newclip")}))
    seg = clips4rt.Segmenter(bundle_copy)
    assert seg.info.kind == "newclip"
    assert seg.run(np.zeros((32, 32, 3), np.uint8), ["a", "b"]).labels.shape == (32, 32)
    for bad in ("Magic Kind!", "", 5, "x" * 40):
        _edit_metadata(bundle_copy, lambda p, b=bad: p.update({"clips4rt.kind": json.dumps(b)}))
        with pytest.raises(BundleError, match="'kind' = .* is not a name of the form"):
            clips4rt.Segmenter(bundle_copy)


def test_text_graph_missing(bundle_copy):
    bundle_copy.with_name("maskclip.text.onnx").unlink()
    with pytest.raises(BundleError, match="text graph .* is missing"):
        clips4rt.Segmenter(bundle_copy)


def test_text_graph_hash_mismatch(bundle_copy):
    text = bundle_copy.with_name("maskclip.text.onnx")
    model = onnx.load(str(text))  # a valid text graph, but not the one exported
    model.doc_string = "edited after export"
    onnx.save(model, str(text))
    with pytest.raises(BundleError, match="sha256"):
        clips4rt.Segmenter(bundle_copy)


@pytest.mark.parametrize(
    "classes,err,msg",
    [
        ([], ValueError, "empty"),
        ("cat,dog", TypeError, "list of names"),
        (["cat", 3], TypeError, "must be strings"),
        (["cat", "  "], ValueError, "empty name"),
        (["cat", "dog", "cat"], ValueError, "duplicate class names \\['cat'\\]"),
        (None, TypeError, "list of strings"),
    ],
)
def test_bad_classes(seg, classes, err, msg):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(err, match=msg):
        seg.run(img, classes)


@pytest.mark.parametrize(
    "image,msg",
    [
        (np.zeros((32, 32, 3), np.float32), "dtype float32, expected uint8"),
        (np.zeros((32, 32, 3), np.int64), "dtype int64"),
        (np.zeros((2, 32, 32, 3), np.uint8), "shape \\(2, 32, 32, 3\\)"),
        (np.zeros((32, 32, 5), np.uint8), "5 channels"),
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((0, 32, 3), np.uint8), "empty"),
        ([[0, 1], [2, 3]], "unsupported image type list"),
    ],
)
def test_bad_arrays(seg, image, msg):
    with pytest.raises(ImageError, match=msg):
        seg.run(image, ["cat"])


def test_image_smaller_than_a_patch(seg):
    with pytest.raises(ImageError, match="smaller than one 8x8 patch"):
        seg.run(np.zeros((5, 40, 3), np.uint8), ["cat"])


def test_truncated_and_foreign_image_files(seg, tmp_path):
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="t.png: cannot decode image .* truncated"):
        seg.run(tmp_path / "t.png", ["cat"])
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="x.jpg: not an image file"):
        seg.run(tmp_path / "x.jpg", ["cat"])
    with pytest.raises(FileNotFoundError, match="image file not found"):
        seg.run(tmp_path / "missing.jpg", ["cat"])


def test_bad_templates_and_size(seg):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="exactly one"):
        seg.run(img, ["cat"], templates=["no placeholder"])
    with pytest.raises(ValueError, match=r"size 4 is outside \[8, 4096\]"):
        seg.run(img, ["cat"], size=4)


# ---------------------------------------------------------------- issue 13: bounds
def test_size_is_bounded_before_anything_is_allocated(seg):
    img = np.zeros((32, 32, 3), np.uint8)
    for bad in (0, -8, 2.5, "64", True):  # size=0 was silently "the default"
        with pytest.raises(ValueError, match="size must be a positive int|outside"):
            seg.run(img, ["cat"], size=bad)
    with pytest.raises(ValueError, match=r"outside \[8, 4096\]"):
        seg.run(img, ["cat"], size=100000)  # used to allocate until the OOM killer came
    wide = np.zeros((32, 400, 3), np.uint8)  # 2048 x 8192 graph input at size 2048
    with pytest.raises(ValueError, match=r"8192x2048 = 16777216 pixels .*max_input_pixels"):
        seg.run(wide, ["cat"], size=2048)
    for call in (
        lambda: seg.run_batch([img], ["cat"], size=0),
        lambda: seg.stream([img], ["cat"], size=10**6),
    ):
        with pytest.raises(ValueError, match="size"):
            call()
    assert seg.run(img, ["cat"], size=16).labels.shape == (32, 32)


def test_class_names_and_templates_are_bounded(seg):
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="over the limit of 10000"):
        seg.run(img, [f"c{i}" for i in range(10001)])
    with pytest.raises(ValueError, match="over the limit of 1000"):
        seg.run(img, ["x" * 1001])
    with pytest.raises(ValueError, match="lone surrogate"):
        seg.run(img, ["cat\udc80"])  # used to raise UnicodeEncodeError
    with pytest.raises(ValueError, match="no printable characters"):
        seg.run(img, ["\x00\x01\x7f"])
    with pytest.raises(ValueError, match="templates: at most"):
        seg.run(img, ["cat"], templates=["a {} " + "y" * 1000])
    # other braces in a template are text, not format fields
    r = seg.run(img, ["cat"], templates=["a {} with {x} and {0}"])
    assert r.labels.shape == (16, 16)


def test_thread_counts_are_bounded(bundles, monkeypatch):
    for bad in (-1, 10000, 2.0, True):
        with pytest.raises(ValueError, match="threads"):
            clips4rt.Segmenter(bundles["maskclip"], threads=bad)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # 4x the cores: 32 (past the floor 16)
    with pytest.raises(ValueError, match="threads=33 is over the limit of 32 "):
        clips4rt.Segmenter(bundles["maskclip"], threads=33)
    monkeypatch.undo()
    assert clips4rt.Segmenter(bundles["maskclip"], post_threads=1024).post_threads == 1024
    with pytest.raises(ValueError, match="post_threads must be an int in \\[0, 1024\\]"):
        clips4rt.Segmenter(bundles["maskclip"], post_threads=1025)
    for name in ("max_input_pixels", "max_pixels"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            clips4rt.Segmenter(bundles["maskclip"], **{name: 0})


def test_size_zero_is_not_a_size(seg):
    with pytest.raises(ValueError, match="size must be a positive int"):
        seg.run(np.zeros((16, 16, 3), np.uint8), ["cat"], size=0)


def test_a_repeated_plain_question_is_answered_from_the_memo(seg, monkeypatch):
    img = np.zeros((16, 16, 3), np.uint8)
    seg.run(img, ["cat", "dog"])
    calls = []
    check = seg._check_prompts
    monkeypatch.setattr(seg, "_check_prompts", lambda *a: calls.append(a) or check(*a))
    seg.run(img, ["cat", "dog"])
    seg.run(img, ["cat", "dog"], templates=["a {}."], background=["sky"])
    seg.run(img, ["cat", "dog"], templates=["a {}."], background=["sky"])
    assert len(calls) == 1  # the first plain repeat and the second custom one: memo


def test_run_batch_splits_large_groups(seg, monkeypatch):
    sizes = []
    embed = seg.embed
    monkeypatch.setattr(seg, "embed", lambda x: sizes.append(len(x)) or embed(x))
    imgs = [np.full((16, 16, 3), i, np.uint8) for i in range(40)]
    res = seg.run_batch(imgs, ["cat", "dog"])
    assert sizes == [16, 16, 8] and len(res) == 40


def _png(path, w, h, rows):
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    raw = b"".join(b"\x00" + bytes([200]) * (w * 3) for _ in range(rows))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bombs_and_truncated_pngs(seg, tmp_path, monkeypatch):
    from clips4rt import images

    bomb = _png(tmp_path / "bomb.png", 60000, 60000, 1)  # PIL's own error type before
    with pytest.raises(ImageError, match="bomb.png.*MAX_IMAGE_PIXELS"):
        seg.run(bomb, ["cat"])
    short = _png(tmp_path / "short.png", 1200, 900, 2)  # header 1200x900, 2 rows of data
    with pytest.raises(ImageError, match="short.png: truncated PNG"):
        seg.run(short, ["cat"])  # used to decode "successfully" into a blank image
    full = _png(tmp_path / "full.png", 1200, 900, 900)  # one colour: compresses ~800:1
    assert images.load_image(full).shape == (900, 1200, 3)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:-40])  # cut inside the pixel data
    with pytest.raises(ImageError, match="cut.png"):
        images.load_image(cut)
    # the pixel limit: configurable, checked before decoding, for every input kind
    monkeypatch.setattr(images, "MAX_PIXELS", 1000 * 1000)
    for im in (full, Image.new("RGB", (1200, 900)), np.zeros((900, 1200, 3), np.uint8)):
        with pytest.raises(ImageError, match="over the limit of 1000000"):
            images.load_image(im)
    assert images.load_image(full, max_pixels=None).shape == (900, 1200, 3)
    with pytest.raises(ImageError, match="over the limit of 100 "):
        clips4rt.Segmenter(seg.path, max_pixels=100).run(np.zeros((20, 20, 3), np.uint8), ["a"])


@pytest.mark.parametrize(
    "text_model",
    ["../maskclip.text.onnx", "/etc/passwd", "sub/maskclip.text.onnx", "..", "", "a\\b", 7],
)
def test_text_graph_must_be_a_sibling_file(bundle_copy, text_model):
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.text_model": json.dumps(text_model)}))
    with pytest.raises(BundleError, match="text_model.*plain file name"):
        clips4rt.Segmenter(bundle_copy)


@pytest.mark.parametrize(
    "field,value",
    [
        ("logit_scale", float("nan")),
        ("logit_scale", -1.0),
        ("background_threshold", 5),
        ("background_classes", "sky"),  # used to be read as letters
        ("input_size", 1e9),
        ("embed_dim", "64"),
        ("stride", 0),
        ("mean", [0.5, 0.5]),
        ("std", [0.2, 0.0, 0.2]),
        ("context_length", 10**9),
        ("prompt_templates", ["no placeholder"]),
        ("text_model_sha256", "abc"),
    ],
)
def test_metadata_values_are_checked_at_load(bundle_copy, field, value):
    _edit_metadata(bundle_copy, lambda p: p.update({f"clips4rt.{field}": json.dumps(value)}))
    with pytest.raises(BundleError, match=f"'{field}'"):
        clips4rt.Segmenter(bundle_copy)


def test_metadata_must_agree_with_the_graphs(bundle_copy):
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.embed_dim": "65"}))
    with pytest.raises(BundleError, match="embed_dim.? 65"):
        clips4rt.Segmenter(bundle_copy)


def test_metadata_stride_must_match_the_graph(bundle_copy):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(bundle_copy)).metadata_props}
    stride = json.loads(props["clips4rt.stride"])
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.stride": json.dumps(stride // 2)}))
    with pytest.raises(BundleError, match=f"stride {stride // 2}"):
        clips4rt.Segmenter(bundle_copy)


def test_text_cache_is_safe_under_eviction_from_other_threads(bundles):
    import threading

    seg = clips4rt.Segmenter(bundles["maskclip"], threads=1)
    errors = []

    def worker(t):
        try:
            for i in range(40):
                names = [f"t{t} c{i} {j}" for j in range(120)] + ["shared"]
                assert seg.text_embeddings(names).shape[0] == len(names)
        except Exception as e:  # noqa: BLE001 - any failure fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:1]
    assert len(seg.text._cache) <= 4096


def test_image_formats_and_modes(tmp_path):
    from clips4rt import images

    eps = tmp_path / "x.eps"  # EPS would hand the file to Ghostscript: not a format we open
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(ImageError, match="x.eps: not an image file of a supported format"):
        images.load_image(eps)
    eight = np.arange(0, 240, 10, dtype=np.int32).reshape(4, 6)  # mode I holding 8-bit
    out = images.load_image(Image.fromarray(eight, "I"))
    np.testing.assert_array_equal(out[..., 0], eight)  # used to come out ~black (/257)
    sixteen = (eight * 257).astype(np.uint16)
    np.testing.assert_array_equal(images.load_image(Image.fromarray(sixteen))[..., 1], eight)
    wide = np.array([[-1000, 0], [500, 3000]], np.int32)  # no known range: its own
    np.testing.assert_array_equal(
        images.load_image(Image.fromarray(wide, "I"))[..., 2], [[0, 64], [96, 255]]
    )
    flat = np.full((2, 3), -7, np.int32)  # one value outside every known range
    assert (images.load_image(Image.fromarray(flat, "I")) == 0).all()
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    np.testing.assert_array_equal(
        images.load_image(Image.fromarray(unit, "F"))[..., 0], [[0, 128], [255, 64]]
    )
    for bad in (np.inf, np.nan):  # a float image with one +inf used to come out black
        f = unit.copy()
        f[0, 0] = bad
        with pytest.raises(ImageError, match="NaN or infinite"):
            images.load_image(Image.fromarray(f, "F"))
    la = Image.new("La", (5, 4), (100, 255))  # premultiplied: Pillow's raw ValueError before
    assert images.load_image(la).shape == (4, 5, 3)
    tif = tmp_path / "f.tif"
    Image.fromarray(unit * 255, "F").save(tif)
    assert images.load_image(tif).shape == (2, 2, 3)


def test_arrays_read_like_files(tmp_path):
    """RGBA, gray+alpha, 16-bit and float grayscale: the same content gives the same
    image from a numpy array as from a file (used to be refused as arrays only)."""
    from clips4rt.images import load_image

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (6, 7, 4), np.uint8)
    la = rng.integers(0, 255, (6, 7, 2), np.uint8)
    g16 = rng.integers(0, 65535, (6, 7), np.uint16)
    f32 = rng.random((6, 7)).astype(np.float32)
    for arr, mode in ((rgba, "RGBA"), (la, "LA"), (g16, "I;16"), (f32, "F")):
        path = tmp_path / f"{mode.replace(';', '')}.{'tif' if mode == 'F' else 'png'}"
        img = Image.fromarray(arr[..., 0]).convert("L") if mode == "LA" else Image.fromarray(arr)
        if mode == "LA":
            img.putalpha(Image.fromarray(arr[..., 1]))
        assert img.mode == mode
        img.save(path)
        np.testing.assert_array_equal(load_image(arr), load_image(path), err_msg=mode)


def test_names_the_model_cannot_tell_apart_and_cut_prompts(seg):
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="'cat' and 'Cat' are the same text"):
        seg.run(img, ["cat", "Cat"])
    with pytest.raises(ValueError, match="same text"):
        seg.run(img, ["sky", "dog", "  SKY "])
    long = " ".join(["word"] * 120)  # far over the context length
    with pytest.warns(UserWarning, match="longer than the text model's"):
        seg.run(img, [long])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg.run(img, ["a short name"])
