"""clips4rt.fit_head: few-shot heads on the frozen pixel embeddings, their file format
(hostile files refused before anything large is read), and their use in run, run_batch,
stream and the CLI, mixed with classes asked by name."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt import fewshot as FS
from clips4rt.cli import main

PROTOCOL = {"threshold": 0.0, "background": [], "negatives": False}


@pytest.fixture(scope="module")
def seg():
    return clips4rt.Segmenter(threads=2)


@pytest.fixture(scope="module")
def scenes():
    from train.toyworld import make_scene

    return [make_scene(7100, i, 128) for i in range(20)]


@pytest.fixture(scope="module")
def head(seg, scenes):
    from train.toyworld.world import CLASSES

    return clips4rt.fit_head(seg, [s.image for s in scenes], [s.mask for s in scenes],
                             list(CLASSES))  # fmt: skip


def _miou(seg, scenes, classes, head=None) -> float:
    from train.evaluate.metrics import confusion, iou_per_class

    n = len(classes)
    text = [c for c in classes if head is None or c not in head.classes]
    order = text + (list(head.classes) if head is not None else [])
    lut = np.array([classes.index(c) for c in order] + [-1])
    conf = np.zeros((n, n + 1), np.int64)
    for s in scenes:
        conf += confusion(s.mask, lut[seg.run(s.image, text, head=head, **PROTOCOL).labels], n)
    return float(np.nanmean(iou_per_class(conf)))


def test_text_start_without_steps_is_language_mode(seg, scenes):
    """init='text', 0 steps: the head is the names' text prototypes, and a run with it
    labels every pixel as a run by name does (the mixing adds nothing of its own)."""
    from train.toyworld.world import CLASSES

    names = ["sky", "grass", "water", "sand", "brick wall", "snow", "ball", "box"]
    h = clips4rt.fit_head(seg, [s.image for s in scenes], [s.mask for s in scenes],
                          list(CLASSES), steps=0)  # fmt: skip
    assert np.allclose(h.prototypes, seg.text_embeddings(list(CLASSES)), atol=1e-6)
    sub = clips4rt.Head(names[4:], h.prototypes[4:8], np.arange(4))
    for s in scenes[:6]:
        by_name = seg.run(s.image, names, **PROTOCOL)
        mixed = seg.run(s.image, names[:4], head=sub, **PROTOCOL)
        assert mixed.classes == names
        assert np.array_equal(mixed.labels, by_name.labels)
        assert np.allclose(mixed.scores, by_name.scores, atol=1e-5)


def test_heads_beat_language_mode_with_enough_scenes_and_do_not_lose_with_few(seg, head):
    """Held-out scenes of another seed. 100 labelled scenes: well ahead of language mode
    (benchmarks/bench_fewshot.py on 2 x 500 held-out scenes: +8 mIoU); 20 (the `head`
    fixture, l2 chosen by cross-validation): about level (a refined head that lost would
    be kept only if the cross-validation failed)."""
    from train.toyworld import make_scene
    from train.toyworld.world import CLASSES

    held = [make_scene(7200, i, 128) for i in range(60)]
    many = [make_scene(7400, i, 128) for i in range(100)]
    big = clips4rt.fit_head(seg, [s.image for s in many], [s.mask for s in many],
                            list(CLASSES), l2=0.1)  # fmt: skip
    lang = _miou(seg, held, list(CLASSES))
    assert _miou(seg, held, list(CLASSES), big) >= lang + 0.04, lang
    assert _miou(seg, held, list(CLASSES), head) >= lang - 0.015, lang


def test_refinement_fits_the_labelled_cells(seg, scenes):
    """More steps fit the support better than the start (the loss goes down)."""
    from train.toyworld.world import CLASSES

    ims, ms = [s.image for s in scenes[:10]], [s.mask for s in scenes[:10]]
    acc = []
    for steps in (0, 100):
        h = clips4rt.fit_head(seg, ims, ms, list(CLASSES), steps=steps, l2=0.1)
        right = total = 0
        for im, m in zip(ims, ms):
            emb = seg.embed_image(im)
            cells = FS.cell_labels(m.astype(np.int64), *emb.shape[1:], len(CLASSES)).reshape(-1)
            x = emb.reshape(emb.shape[0], -1).T
            pred = h.owner[np.argmax(x @ h.prototypes.T, 1)]
            right += int((pred == cells)[cells >= 0].sum())
            total += int((cells >= 0).sum())
        acc.append(right / total)
    assert acc[1] > acc[0] + 0.03, acc


def test_imprint_start_for_names_the_text_model_cannot_know(seg, scenes):
    codes = [f"part-{i:03d}" for i in range(20)]  # the class names mean nothing
    h = clips4rt.fit_head(seg, [s.image for s in scenes], [s.mask for s in scenes], codes,
                          init="imprint", steps=0)  # fmt: skip
    assert 20 <= len(h.prototypes) <= 80 and sorted(set(h.owner)) == list(range(20))
    s = scenes[0]
    labels = seg.run(s.image, None, head=h, **PROTOCOL).labels
    keep = s.mask != 255
    assert (labels[keep] == s.mask[keep]).mean() > 0.5  # a support scene, mostly right


def test_round_trip_and_use_in_run_batch_and_stream(seg, head, tmp_path):
    from train.toyworld import make_scene

    path = head.save(tmp_path / "toy.head.npz")
    back = clips4rt.Head.load(path)
    assert back.classes == head.classes and np.array_equal(back.prototypes, head.prototypes)
    assert np.array_equal(back.owner, head.owner) and back.meta["images"] == 20
    assert back.meta["model_sha256"] == seg.image_sha256()
    images = [make_scene(7300, i, 128 + 16 * i).image for i in range(4)]
    ref = [seg.run(im, ["person"], head=head) for im in images]
    assert ref[0].classes == ["person", *head.classes]
    for got in (seg.run_batch(images, ["person"], head=back),
                list(seg.stream(images, ["person"], head=str(path))),
                [seg.run(im, ["person"], head=path) for im in images]):  # fmt: skip
        for a, b in zip(ref, got):
            assert np.array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="fitted head"):
        ref[0].probability("sky")  # the calibration is for text prompts
    if seg.info.score_scale:
        assert ref[0].probability("person").shape == ref[0].labels.shape


def test_bad_masks_and_arguments_are_refused(seg, scenes):
    im, m = scenes[0].image, scenes[0].mask
    classes = ["a", "b"]
    with pytest.raises(ValueError, match="outside 0..1"):
        clips4rt.fit_head(seg, [im], [m], classes)
    with pytest.raises(ValueError, match="covers its image"):
        clips4rt.fit_head(seg, [im], [np.zeros((64, 128), np.uint8)], classes)
    with pytest.raises(ValueError, match="integer class indices"):
        clips4rt.fit_head(seg, [im], [np.zeros((128, 128), np.float32)], classes)
    with pytest.raises(ValueError, match="boolean"):
        clips4rt.fit_head(seg, [im], [np.zeros((128, 128), bool)], classes)
    with pytest.raises(ValueError, match="one mask per image"):
        clips4rt.fit_head(seg, [im, im], [np.zeros((128, 128), np.uint8)], classes)
    with pytest.raises(ValueError, match=r"no labelled cells of \['b'\]"):
        clips4rt.fit_head(seg, [im], [np.zeros((128, 128), np.uint8)], classes)
    with pytest.raises(ValueError, match="init"):
        clips4rt.fit_head(seg, [im], [np.zeros((128, 128), np.uint8)], ["a"], init="x")
    ok = clips4rt.fit_head(seg, [im], [np.zeros((128, 128), np.uint8)], ["a"], steps=5)
    with pytest.raises(ValueError, match="both by name and from the head"):
        seg.run(im, ["a"], head=ok)
    narrow = clips4rt.Head(["a"], np.ones((1, 8), np.float32), [0])
    with pytest.raises(ValueError, match="8-d prototypes"):
        seg.run(im, ["b"], head=narrow)
    other = clips4rt.Head(["a"], ok.prototypes, [0], {"model_sha256": "0" * 64})
    with pytest.warns(UserWarning, match="another image graph"):
        seg.run(im, ["b"], head=other)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good(**change):
    meta = json.dumps({"format": FS.FORMAT, "version": FS.VERSION})
    a = {"prototypes": np.eye(2, 64, dtype=np.float32), "owner": np.array([0, 1], np.int32),
         "classes": np.array(["a", "b"]), "meta": np.array(meta)}  # fmt: skip
    a.update(change)
    return a


def test_hostile_head_files_are_refused(tmp_path, monkeypatch):
    def load(data: bytes):
        p = tmp_path / "h.npz"
        p.write_bytes(data)
        return clips4rt.Head.load(p)

    assert load(_npz(**_good())).classes == ["a", "b"]
    cases = {
        "not a zip": (b"\x93NUMPY" + b"0" * 100, "not a zip"),
        "object array (pickle)": (_npz(**_good(classes=np.array(["a", None], object))),
                                  "not a plain"),
        "NaN prototype": (_npz(**_good(prototypes=np.full((2, 64), np.nan, np.float32))),
                          "finite"),
        "owner out of range": (_npz(**_good(owner=np.array([0, 5], np.int32))), "indexes"),
        "a class without a prototype": (_npz(**_good(owner=np.array([0, 0], np.int32))),
                                        "has no prototype"),
        "foreign meta": (_npz(**_good(meta=np.array('{"format": "x"}'))), "not a clips4rt"),
        "newer version": (_npz(**_good(meta=np.array(json.dumps(
            {"format": FS.FORMAT, "version": 99})))), "format version 99"),
        "float owner": (_npz(**_good(owner=np.array([0.0, 1.0]))), "integers"),
        "extra member": (_npz(**_good(), extra=np.zeros(3)), "members"),
        "3-d prototypes": (_npz(**_good(prototypes=np.zeros((1, 2, 64), np.float32))), "shape"),
    }  # fmt: skip
    for _name, (data, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            load(data)
    # a header that claims a huge array: refused by its size, nothing allocated
    good = zipfile.ZipFile(io.BytesIO(_npz(**_good())))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in good.infolist():
            data = good.read(info)
            if info.filename == "prototypes.npy":
                data = data.replace(b"(2, 64)", b"(1000000000, 64)")
            z.writestr(info.filename, data)
    with pytest.raises(ValueError, match="needs 256000000000 bytes"):
        load(buf.getvalue())
    # a deflated member that unpacks past the bound (a zip bomb in small)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for info in good.infolist():
            z.writestr(info.filename, good.read(info))
        z.writestr("bomb.npy", b"\0" * 2_000_000)
    monkeypatch.setattr(FS, "MAX_FILE_BYTES", 1_000_000)
    with pytest.raises(ValueError, match="members|unpacks"):
        load(buf.getvalue())
    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * 1_000_001)
    with pytest.raises(ValueError, match="not a head file"):
        clips4rt.Head.load(big)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.npz"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match="not a head file"):
            clips4rt.Head.load(fifo)  # fails at once, no blocking read
    with pytest.raises(FileNotFoundError):
        clips4rt.Head.load(tmp_path / "missing.npz")


def test_cli_fit_head_then_segment_with_it(tmp_path, scenes, capsys):
    from train.toyworld.world import CLASSES

    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    for i, s in enumerate(scenes[:8]):
        Image.fromarray(s.image).save(tmp_path / "img" / f"s{i}.png")
        Image.fromarray(s.mask).save(tmp_path / "masks" / f"s{i}.png")
    present = sorted({int(c) for s in scenes[:8] for c in np.unique(s.mask) if c != 255})
    remap = np.full(256, 255, np.uint8)
    remap[present] = np.arange(len(present))
    for i, s in enumerate(scenes[:8]):  # indices into the classes the 8 scenes have
        Image.fromarray(remap[s.mask]).save(tmp_path / "masks" / f"s{i}.png")
    names = ",".join(CLASSES[c] for c in present)
    out = tmp_path / "h.npz"
    argv = ["fit-head", str(tmp_path / "img"), "--masks", str(tmp_path / "masks"),
            "--classes", names, "--out", str(out), "--steps", "20"]  # fmt: skip
    assert main(argv) == 0
    assert clips4rt.Head.load(out).classes == [CLASSES[c] for c in present]
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # not replaced silently
    assert main(["segment", str(tmp_path / "img" / "s0.png"), "--head", str(out), "--classes",
                 "person", "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    written = (tmp_path / "o" / "classes.txt").read_text().split("\n")[:-1]
    assert written == ["person"] + [CLASSES[c] for c in present]
    (tmp_path / "masks" / "s3.png").unlink()
    assert main([*argv[:-2], "--force"]) == 2
    assert "no mask for" in capsys.readouterr().err
