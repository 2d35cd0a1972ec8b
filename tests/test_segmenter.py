"""Segmenter end to end on tiny bundles and image files of every supported mode."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt.images import load_image
from clips4rt.kernels import resize_rgb

CLASSES = ["cat", "dog", "sky", "grass"]


@pytest.fixture(scope="module")
def seg(bundles):
    return clips4rt.Segmenter(bundles["maskclip"])


def _rgb(rng, h=45, w=70):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_run_shapes_and_ranges(seg, rng):
    img = _rgb(rng)
    r = seg.run(img, CLASSES, threshold=0)
    assert r.labels.shape == (45, 70) and r.labels.dtype == np.int32
    assert r.scores.shape == (45, 70) and r.scores.dtype == np.float32
    assert ((r.labels >= 0) & (r.labels < 4)).all()
    assert (r.scores >= 1 / 4 - 1e-6).all() and (r.scores <= 1 + 1e-6).all()
    assert r.classes == CLASSES
    np.testing.assert_array_equal(r.mask("sky"), r.labels == 2)
    with pytest.raises(KeyError, match="not one of the classes"):
        r.mask("tree")


def test_labels_match_a_torch_pipeline(bundles, tiny_clip, rng):
    """What the runtime returns equals the same computation done in torch."""
    torch = pytest.importorskip("torch")
    from clips4rt.export.dense_clip import CLIPText, DenseCLIPImage

    model, _, mean, std = tiny_clip
    seg = clips4rt.Segmenter(bundles["sclip"])
    img = _rgb(rng, 50, 61)
    r = seg.run(img, CLASSES, threshold=0)
    hh, ww = seg.working_size(50, 61)
    resized = resize_rgb(img, (hh, ww))  # the runtime's resize (Pillow's filter, +-1)
    with torch.no_grad():
        z = DenseCLIPImage(model.visual, "sclip", mean, std)(torch.from_numpy(resized[None]))
        prompts = [t.format(c) for c in CLASSES for t in seg.info.prompt_templates]
        t = CLIPText(model)(torch.from_numpy(clips4rt.tokenize(prompts)))
    t = t.reshape(len(CLASSES), -1, t.shape[-1]).mean(1)
    t = torch.nn.functional.normalize(t, dim=-1).double()
    cos = torch.einsum("kd,dhw->khw", t, z[0].double())
    up = torch.nn.functional.interpolate(cos[None], size=(50, 61), mode="bilinear")[0]
    ref = up.argmax(0).numpy()
    top2 = up.topk(2, dim=0).values
    clear = (top2[0] - top2[1]).numpy() > 1e-4  # away from float32 near-ties
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(r.labels[clear], ref[clear])
    # cosines in [-1, 1], C++ vs torch float32 (dot products of D = 32 terms): measured 2.9e-7
    np.testing.assert_allclose(r.similarity, up.max(0).values.numpy(), atol=1e-5)


def test_background_threshold_and_classes(seg, rng):
    img = _rgb(rng)
    base = seg.run(img, CLASSES, threshold=0)
    assert (base.labels >= 0).all()
    r = seg.run(img, CLASSES, threshold=0.5)
    np.testing.assert_array_equal(r.labels == -1, base.scores < 0.5)
    assert (r.labels == -1).any() or (base.scores >= 0.5).all()
    # background names: pixels they win become -1; the rest keep their class
    bg = seg.run(img, CLASSES[:2], background=CLASSES[2:], threshold=0)
    np.testing.assert_array_equal(bg.labels, np.where(base.labels >= 2, -1, base.labels))
    none = seg.run(img, CLASSES, background=[], threshold=0)  # [] = no background names
    np.testing.assert_array_equal(none.labels, base.labels)
    # a name asked for as a class is a class, even if listed as background
    both = seg.run(img, CLASSES, background=["sky"], threshold=0)
    np.testing.assert_array_equal(both.labels, base.labels)
    with pytest.raises(ValueError, match="probability"):
        seg.run(img, CLASSES, threshold=1.5)


def test_text_embeddings_are_cached(bundles, rng):
    seg = clips4rt.Segmenter(bundles["clearclip"])
    calls = []
    real = seg.text.session.run

    class Spy:
        def run(self, *a, **k):
            calls.append(1)
            return real(*a, **k)

    seg.text.session = Spy()
    img = _rgb(rng)
    first = seg.run(img, CLASSES)
    n = len(calls)
    assert n >= 1
    again = seg.run(img, list(reversed(CLASSES)))
    assert len(calls) == n  # same prompts: the text graph does not run again
    np.testing.assert_array_equal(again.labels, np.where(first.labels >= 0, 3 - first.labels, -1))
    seg.run(img, CLASSES + ["tree"])
    assert len(calls) == n + 1  # only the new class is embedded
    seg.run(img, CLASSES, templates=["a {}"])
    assert len(calls) == n + 2  # other templates, other prototypes


def test_run_batch_equals_single_runs(seg, rng):
    imgs = [_rgb(rng, 40, 60), _rgb(rng, 40, 60), _rgb(rng, 64, 32)]
    batch = seg.run_batch(imgs, CLASSES)
    for img, r in zip(imgs, batch):
        single = seg.run(img, CLASSES)
        np.testing.assert_array_equal(r.labels, single.labels)
        np.testing.assert_allclose(r.scores, single.scores, atol=1e-5)  # exact here; a batch may
        # take other GEMM blocking in ORT than one image (ulps of 1)


def test_overlay_has_legend(seg, rng):
    r = seg.run(_rgb(rng), CLASSES)
    ov = r.overlay()
    assert ov.size == (70, 45) and ov.mode == "RGB"
    assert not np.array_equal(np.asarray(ov), r.image)


def _save_modes(tmp_path, rng):
    rgb = _rgb(rng, 48, 64)
    base = Image.fromarray(rgb)
    files = {
        "rgb.png": base,
        "rgb.jpg": base,
        "gray.png": base.convert("L"),
        "bw.png": base.convert("1"),
        "palette.png": base.convert("P"),
        "rgba.png": base.convert("RGBA"),
        "la.png": base.convert("LA"),
        "cmyk.jpg": base.convert("CMYK"),
        "gray16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "rgb.webp": base,
        "rgb.bmp": base,
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    return list(files)


def test_every_supported_file_mode(seg, tmp_path, rng):
    for name in _save_modes(tmp_path, rng):
        arr = load_image(tmp_path / name)
        assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8, name
        r = seg.run(str(tmp_path / name), CLASSES)
        assert r.labels.shape == (48, 64), name


def test_image_conversions_keep_content(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(load_image(g)[..., 1], g)
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png")[..., 0], g)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top opaque red, bottom transparent -> white
    out = load_image(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 0], [255, 255, 255])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").shape == (40, 20, 3)


def test_working_size(seg):
    s = seg.info.stride
    h, w = seg.working_size(45, 70)
    assert h % s == 0 and w % s == 0 and min(h, w) == seg.info.input_size
    h, w = seg.working_size(10, 5000)
    assert w <= 4 * seg.info.input_size and w % s == 0 and h % s == 0
    h, w = seg.working_size(10, 5000, size=45)  # 4 * 45 = 180 is no multiple of 8
    assert (h, w) == (48, 176)


def test_providers(bundles):
    assert clips4rt.Segmenter(bundles["maskclip"]).providers[-1] == "CPUExecutionProvider"
    seg = clips4rt.Segmenter(bundles["maskclip"], providers=["CPUExecutionProvider"], threads=1)
    assert seg.providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="not available"):
        clips4rt.Segmenter(bundles["maskclip"], providers=["NoSuchExecutionProvider"])


def test_thread_options(bundles, rng):
    key = "session.intra_op.allow_spinning"
    seg = clips4rt.Segmenter(bundles["maskclip"], threads=3)
    assert seg.post_threads == min(3, os.cpu_count())  # follow onnxruntime's threads
    assert seg._image.get_session_options().get_session_config_entry(key) == "0"
    spun = clips4rt.Segmenter(bundles["maskclip"], threads=1, post_threads=2, spin=True)
    assert spun.post_threads == 2
    assert spun._image.get_session_options().get_session_config_entry(key) == "1"
    assert clips4rt.Segmenter(bundles["maskclip"]).post_threads == 0  # all cores
    img = _rgb(rng)
    a, b = seg.run(img, ["cat", "dog"]), spun.run(img, ["cat", "dog"])
    np.testing.assert_array_equal(a.labels, b.labels)
    for bad in (-1, 1.5, "2", 5000):
        with pytest.raises(ValueError, match="post_threads"):
            clips4rt.Segmenter(bundles["maskclip"], post_threads=bad)


def test_cli_output_errors_are_one_line_and_leave_nothing(
    bundles, tmp_path, rng, capsys, monkeypatch
):
    from clips4rt.cli import main

    Image.fromarray(_rgb(rng)).save(tmp_path / "a.png")
    args = ["segment", str(tmp_path / "a.png"), "--model", str(bundles["maskclip"])]
    args += ["--classes", "cat,dog"]
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):  # --out is / is under a file
        assert main([*args, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: cannot write") and str(tmp_path / "file") in err
        assert err.count("\n") == 1 and "Traceback" not in err
    out = tmp_path / "full"
    calls = []

    def disk_full(self, fp, *a, **k):  # the second image fails half-way, as on ENOSPC
        calls.append(fp)
        Path(fp).write_bytes(b"\x89PNG partial")
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", disk_full)
    assert main([*args, "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    # the labels PNG landed complete under its name; the overlay left nothing behind
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.png", "classes.txt"]


def test_cli_segment_and_info(bundles, tmp_path, rng, capsys):
    from clips4rt.cli import main

    Image.fromarray(_rgb(rng)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(tmp_path / "a.png"),
            "--model",
            str(bundles["maskclip"]),
            "--classes",
            "cat, dog,sky",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert labels.shape == (45, 70) and labels.max() < 3
    assert Image.open(out / "a_overlay.png").size == (70, 45)
    assert "a.png:" in capsys.readouterr().out
    assert main(["info", str(bundles["maskclip"])]) == 0
    assert '"kind": "maskclip"' in capsys.readouterr().out
    code = main(
        [
            "segment",
            str(tmp_path / "missing.png"),
            "--model",
            str(bundles["maskclip"]),
            "--classes",
            "cat",
            "--out",
            str(out),
        ]
    )
    assert code == 1 and "image file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                str(tmp_path / "a.png"),
                "--model",
                str(bundles["maskclip"]),
                "--classes",
                " , ",
            ]
        )
        == 2
    )
    assert "--classes is empty" in capsys.readouterr().err


def test_overlay_legend_scales_wraps_and_never_draws_boxes(tmp_path, rng):
    import warnings

    from clips4rt.visualize import legend_font, overlay, save_image

    big = np.full((3000, 4000, 3), 128, np.uint8)
    labels = rng.integers(0, 300, big.shape[:2]).astype(np.int32)
    names = [f"class {i}" for i in range(300)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = overlay(big, labels, names)
    legend = np.asarray(img)[:, :, :] == 0  # the legend's black panel
    rows = np.nonzero(legend.all(axis=2).any(axis=1))[0]
    assert rows.max() > 2900  # a column runs down the whole image height...
    cols = np.nonzero(legend.all(axis=2)[5])[0]
    assert 1000 < cols.max() < 4000  # ...and the legend wraps into several columns
    assert legend_font(66).size == 66  # text ~1/45 of the short side
    # more classes than fit: the last line counts the rest
    small = overlay(np.full((60, 80, 3), 100, np.uint8), labels[:60, :80] % 30, names[:30])
    assert small.size == (80, 60)
    with pytest.warns(UserWarning, match="no glyph"):
        overlay(big[:100, :100], np.zeros((100, 100), np.int32), ["\U0010fffd thing"])
    save_image(img, tmp_path / "o.png")
    assert Image.open(tmp_path / "o.png").size == (4000, 3000)


def test_png_level_fast_for_colour_and_big_images():
    from clips4rt.visualize import png_level

    assert png_level(Image.new("RGB", (640, 480))) == 1  # overlays: 5x faster than level 6
    assert png_level(Image.new("P", (640, 480))) == 6  # label PNGs: small and cheap anyway
    assert png_level(Image.new("I;16", (64, 48))) == 6
    assert png_level(Image.new("P", (1025, 1024))) == 1  # over 1 MP: speed first
