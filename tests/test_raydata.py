"""clips4rt segment --ray on a local Ray: the same files, byte for byte, as the serial run."""

from __future__ import annotations

import filecmp
import io

import numpy as np
import pytest
from PIL import Image

from clips4rt.cli import main

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
pytest.importorskip("ray.data", reason="the `ray` extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    from clips4rt import raydata

    raydata.init(None, num_cpus=2)
    yield ray
    ray.shutdown()


def _folder(root):
    from train.toyworld import make_scene

    (root / "sub").mkdir(parents=True)
    for i in range(7):  # two folders, two sizes (batches of mixed working sizes)
        img = Image.fromarray(make_scene(3000, i, 256 if i % 3 else 160).image)
        img.save(root / ("sub" if i % 2 else "") / f"s{i}.png")
    (root / "broken.png").write_bytes(b"not an image")  # skipped by both, exit status 1
    return root


def test_ray_writes_the_serial_runs_files(tmp_path, local_ray):
    src = _folder(tmp_path / "in")
    args = [str(src), "--classes", "sky,grass,ball,car,star", "--threads", "1", "--quiet"]
    serial, spread = tmp_path / "serial", tmp_path / "ray"
    assert main(["segment", *args, "--out", str(serial), "--coco", str(tmp_path / "a.json"),
                 "--yolo", str(tmp_path / "ya")]) == 1  # fmt: skip
    assert main(["segment", *args, "--out", str(spread), "--coco", str(tmp_path / "b.json"),
                 "--yolo", str(tmp_path / "yb"), "--ray", "--ray-actors", "2",
                 "--ray-batch", "3"]) == 1  # fmt: skip
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 7
    assert files == sorted(p.relative_to(spread) for p in spread.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(serial, spread, files, shallow=False)
    assert mismatch == [] and errors == []
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert filecmp.dircmp(tmp_path / "ya", tmp_path / "yb").diff_files == []


def test_segment_dataset_of_image_bytes(local_ray):
    import clips4rt
    from clips4rt import raydata
    from train.toyworld import make_scene

    images = [make_scene(3001, i, 192).image for i in range(4)]
    rows = []
    for i, a in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        rows.append({"image": buf.getvalue(), "index": i})
    rows.append({"image": b"junk", "index": 4})
    ds = raydata.segment_dataset(ray.data.from_items(rows), ["sky", "ball"], actors=1,
                                 threads=1, batch_size=2, threshold=0.3)  # fmt: skip
    out = sorted(ds.iter_rows(), key=lambda r: r["index"])
    seg = clips4rt.Segmenter(threads=1)
    for row, a in zip(out, images):
        want = seg.run(a, ["sky", "ball"], threshold=0.3).labels
        got = np.asarray(Image.open(io.BytesIO(row["labels_png"]))).astype(np.int32)
        np.testing.assert_array_equal(np.where(got == 255, -1, got), want)
        assert row["error"] == ""
    assert out[4]["error"].startswith("ImageError") and out[4]["labels_png"] == b""


def test_rows_are_written_in_input_order_whatever_order_they_come_in():
    from clips4rt.raydata import in_order

    rows = [{"index": i} for i in (3, 0, 2, 1, 5, 4)]
    assert [r["index"] for r in in_order(rows)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="without row 1"):
        list(in_order([{"index": 0}, {"index": 2}]))


def test_a_folder_taken_for_the_ray_address_is_refused(tmp_path, capsys):
    for name in ("photos", "more"):
        (tmp_path / name).mkdir()
    argv = ["segment", "--ray", str(tmp_path / "photos"), str(tmp_path / "more")]
    assert main([*argv, "--classes", "sky"]) == 2
    assert "not a Ray address" in capsys.readouterr().err
