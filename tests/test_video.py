"""clips4rt video: PyAV round trip on tiny generated clips, and its errors."""

from fractions import Fraction

import numpy as np
import pytest

import clips4rt
from clips4rt import cli

av = pytest.importorskip("av", reason="the `video` extra (PyAV) is not installed")
video = pytest.importorskip("clips4rt.video")

CLASSES = ["cat", "dog", "sky"]


def _write_clip(path, frames, rate=12):
    out = av.open(str(path), "w")
    s = out.add_stream("mpeg4", rate=rate)
    s.height, s.width = frames[0].shape[:2] if frames else (48, 64)
    s.pix_fmt = "yuv420p"
    out.start_encoding()  # the header, also for a video without frames
    for f in frames:
        for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


def _moving(rng, n, h=48, w=64):
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + n, 3), np.uint8).repeat(8, 0).repeat(8, 1)
    return [np.ascontiguousarray(base[:h, 8 * i : 8 * i + w]) for i in range(n)]


@pytest.fixture(scope="module")
def seg(bundles):
    return clips4rt.Segmenter(bundles["maskclip"])


@pytest.mark.parametrize("size", [(48, 64), (47, 65)])  # odd sizes take 4:4:4
def test_round_trip(seg, rng, tmp_path, size):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 9, *size))
    out, labels = tmp_path / "overlay.mp4", tmp_path / "labels"
    summary = video.segment_video(seg, clip, CLASSES, out, labels_dir=labels, progress=False)
    assert summary["frames"] == 9 and summary["fps"] > 0
    assert abs(sum(summary["share"].values()) + summary["background"] - 1) < 1e-9
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.height, s.width) == size and s.average_rate == Fraction(12)
        assert sum(1 for _ in c.decode(s)) == 9
    pngs = sorted(labels.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(9)]
    with av.open(str(clip)) as c:  # the labels are the runtime's on the decoded frames
        for i, frame in enumerate(video.frames(c)):
            ref = seg.run(frame, CLASSES).labels
            got = np.asarray(clips4rt.visualize.Image.open(pngs[i]))
            np.testing.assert_array_equal(got, np.where(ref < 0, 255, ref))
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_inputs_leave_no_output(seg, rng, tmp_path):
    out = tmp_path / "o.mp4"
    with pytest.raises(FileNotFoundError):
        video.segment_video(seg, tmp_path / "missing.mp4", CLASSES, out, progress=False)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(clips4rt.VideoError, match="cannot open"):
        video.segment_video(seg, tmp_path / "garbage.mp4", CLASSES, out, progress=False)
    empty = _write_clip(tmp_path / "empty.avi", [])
    with pytest.raises(clips4rt.VideoError, match="no frames"):
        video.segment_video(seg, empty, CLASSES, out, progress=False)
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 3))
    with pytest.raises(clips4rt.VideoError, match="does not exist"):
        video.segment_video(seg, clip, CLASSES, tmp_path / "no" / "o.mp4", progress=False)
    with pytest.raises(clips4rt.VideoError, match="suffix"):
        video.segment_video(seg, clip, CLASSES, tmp_path / "o.gif", progress=False)
    with pytest.raises(clips4rt.VideoError, match="camera 97"):
        video.segment_video(seg, 97, CLASSES, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_failure_mid_video_removes_the_partial_file(seg, rng, tmp_path, monkeypatch):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 6))
    real = video.timed_frames

    def breaks(container):
        for i, f in enumerate(real(container)):
            if i == 3:
                raise clips4rt.VideoError("frame 3 is corrupt")
            yield f

    monkeypatch.setattr(video, "timed_frames", breaks)
    out, labels = tmp_path / "o.mp4", tmp_path / "labels"
    labels.mkdir()
    (labels / "mine.txt").write_text("the user's file stays")
    with pytest.raises(clips4rt.VideoError, match="frame 3"):
        video.segment_video(seg, clip, CLASSES, out, labels_dir=labels, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    assert [p.name for p in labels.iterdir()] == ["mine.txt"]  # its label PNGs went too


def test_cli(bundles, rng, tmp_path, capsys):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 4))
    out = tmp_path / "o.mkv"
    argv = ["video", str(clip), "--model", str(bundles["maskclip"]), "--classes", "cat,dog"]
    assert cli.main([*argv, "--out", str(out), "--quiet", "--max-frames", "3"]) == 0
    assert "3 frames" in capsys.readouterr().out and out.is_file()
    assert cli.main([*argv, "--out", str(tmp_path / "x.mp4"), "--max-frames", "0"]) == 2
    assert cli.main(["video", str(tmp_path / "nope.mp4"), "--classes", "a", "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_jsonl_without_overlay(seg, rng, tmp_path):
    """--jsonl alone: one line per frame (time, shares equal to the label PNGs'), no video,
    and no overlay drawn."""
    import json

    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 5))
    labels, lines = tmp_path / "labels", tmp_path / "frames.jsonl"
    drawn = []
    real = clips4rt.SegmentationResult.overlay
    try:
        clips4rt.SegmentationResult.overlay = lambda self, *a, **k: drawn.append(1) or real(
            self, *a, **k)  # fmt: skip
        summary = video.segment_video(seg, clip, CLASSES, None, labels_dir=labels, jsonl=lines,
                                      progress=False)  # fmt: skip
    finally:
        clips4rt.SegmentationResult.overlay = real
    assert not drawn and summary["out"] is None and summary["frames"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.jsonl", "in.avi", "labels"]
    recs = [json.loads(x) for x in lines.read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(5))
    np.testing.assert_allclose([r["time"] for r in recs], np.arange(5) / 12, atol=1e-6)
    for r in recs:
        lab = np.asarray(__import__("PIL.Image").Image.open(labels / f"{r['frame']:06d}.png"))
        for k, c in enumerate(CLASSES):
            assert r["share"].get(c, 0.0) == pytest.approx((lab == k).mean(), abs=1e-6)
        assert r["background"] == pytest.approx((lab == 255).mean(), abs=1e-6)
        assert "polygons" not in r


def test_jsonl_polygons_and_errors(seg, rng, tmp_path, capsys):
    import json

    pytest.importorskip("cv2")
    from clips4rt import labels as L

    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 3))
    lines = tmp_path / "f.jsonl"
    argv = ["video", str(clip), "--model", str(seg.path), "--classes", ",".join(CLASSES),
            "--quiet"]  # fmt: skip
    assert cli.main([*argv, "--jsonl", str(lines), "--polygons", "--tolerance", "0"]) == 0
    rec = json.loads(lines.read_text().splitlines()[0])
    first = next(seg.stream(video.frames(video.open_source(clip)), CLASSES))
    for k, c in enumerate(CLASSES):
        polys = [np.array(p, float).reshape(-1, 2) for p in rec["polygons"].get(c, [])]
        np.testing.assert_array_equal(L.rasterize(polys, first.labels.shape), first.labels == k)
    assert cli.main(argv) == 2  # no output asked for
    assert "--out" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(tmp_path / "o.mp4"), "--polygons"]) == 2
    assert "--jsonl" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
    assert cli.main([*argv, "--jsonl", str(tmp_path / "no" / "f.jsonl")]) == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
