"""Bad input gets a typed error whose message names the problem (and the fix)."""

import json
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


def test_unknown_kind(bundle_copy):
    _edit_metadata(bundle_copy, lambda p: p.update({"clips4rt.kind": json.dumps("magic")}))
    with pytest.raises(BundleError, match="unknown kind 'magic'"):
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
        (np.zeros((32, 32, 3), np.uint16), "dtype uint16"),
        (np.zeros((2, 32, 32, 3), np.uint8), "shape \\(2, 32, 32, 3\\)"),
        (np.zeros((32, 32, 4), np.uint8), "4 channels .* Drop alpha"),
        (np.zeros((32, 32, 2), np.uint8), "2 channels"),
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
    with pytest.raises(ValueError, match="smaller than the model's stride"):
        seg.run(img, ["cat"], size=4)
