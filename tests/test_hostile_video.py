"""Video and streams never eat the user's files and never hang on close (issue 26,
items 6, 11, 13)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import clips4rt
from clips4rt.stream import pipelined

av = pytest.importorskip("av", reason="the `video` extra (PyAV) is not installed")
video = pytest.importorskip("clips4rt.video")

from tests.test_video import _moving, _write_clip  # noqa: E402

CLASSES = ["sky", "sand", "car"]


@pytest.fixture(scope="module")
def seg():
    return clips4rt.Segmenter()


def _user_files(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:06d}.png").write_bytes(b"the user's own file %d" % i)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_labels_dir_never_overwrites_the_users_files(seg, rng, tmp_path, monkeypatch):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 4))
    labels = tmp_path / "labels"
    before = _user_files(labels)
    monkeypatch.setattr(video, "open_source", lambda s: pytest.fail("decoded before checks"))
    with pytest.raises(clips4rt.VideoError, match="already holds label PNGs"):
        video.segment_video(seg, clip, CLASSES, tmp_path / "o.mp4", labels_dir=labels,
                            progress=False)  # fmt: skip
    assert {p.name: p.read_bytes() for p in labels.iterdir()} == before
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "o.mp4").exists()


def test_interrupted_run_removes_only_its_own_files(seg, rng, tmp_path, monkeypatch):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 6))
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "notes.txt").write_text("mine")
    real = video.timed_frames

    def interrupted(container):
        for i, f in enumerate(real(container)):
            if i == 4:
                raise KeyboardInterrupt
            yield f

    monkeypatch.setattr(video, "timed_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        video.segment_video(seg, clip, CLASSES, tmp_path / "o.mp4", labels_dir=labels,
                            progress=False)  # fmt: skip
    assert [p.name for p in labels.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "o.mp4").exists()


def test_output_checks_come_before_decoding(seg, rng, tmp_path, monkeypatch):
    clip = _write_clip(tmp_path / "in.mp4", _moving(rng, 3))
    original = clip.read_bytes()
    with pytest.raises(clips4rt.VideoError, match="is the input video"):
        video.segment_video(seg, clip, CLASSES, clip, progress=False)
    assert clip.read_bytes() == original
    monkeypatch.setattr(video, "open_source", lambda s: pytest.fail("decoded before checks"))
    (tmp_path / "folder.mp4").mkdir()
    for out, words in ((tmp_path / "folder.mp4", "is a folder"), (tmp_path / "o.xyz", "suffix")):
        with pytest.raises(clips4rt.VideoError, match=words) as e:
            video.segment_video(seg, clip, CLASSES, out, progress=False)
        assert "partial" not in str(e.value)
    assert not list(tmp_path.glob(".*partial*"))


def test_one_writer_per_output(seg, rng, tmp_path):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 3))
    out = tmp_path / "o.mp4"
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    held = video._lock(partial, out)  # another run writing o.mp4
    try:
        with pytest.raises(clips4rt.VideoError, match="another clips4rt video is writing"):
            video.segment_video(seg, clip, CLASSES, out, progress=False)
        assert partial.exists()  # the other run's temporary is not touched
    finally:
        video._unlock(held, partial)
    stale = partial.write_bytes(b"left by a killed run")  # no lock: taken over
    assert stale and video.segment_video(seg, clip, CLASSES, out, progress=False)["frames"] == 3
    assert out.is_file() and not partial.exists()


def test_sigterm_cleans_up_like_ctrl_c(rng, tmp_path):
    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 400, 96, 128))
    labels = tmp_path / "labels"
    cmd = [sys.executable, "-m", "clips4rt.cli", "video", str(clip), "--classes", "sky,sand",
           "--out", str(tmp_path / "o.mp4"), "--labels-dir", str(labels), "--quiet"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(labels.glob("*.png")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be signalled"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not list(labels.glob("*.png")) and not list(tmp_path.glob(".*partial*"))
    assert not (tmp_path / "o.mp4").exists()


def test_closing_a_stream_never_hangs_on_a_stalled_source(seg):
    release = threading.Event()

    def camera():
        yield np.zeros((48, 64, 3), np.uint8)
        release.wait(120)  # the camera stops delivering
        yield np.zeros((48, 64, 3), np.uint8)

    results = seg.stream(camera(), CLASSES)
    next(results)
    t0 = time.monotonic()
    results.close()
    took = time.monotonic() - t0
    release.set()
    assert took < 10, took
    deadline = time.monotonic() + 10  # the worker ends at the source's next item
    while any(t.name == "clips4rt-stream" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.05)


def test_pipelined_close_still_joins_a_healthy_worker():
    seen = []
    gen = pipelined(range(100), lambda x: x, lambda x: seen.append(x) or x, depth=2)
    next(gen)
    gen.close()
    alive = [t for t in threading.enumerate() if t.name == "clips4rt-stream"]
    assert not alive


def test_a_signal_right_after_a_label_png_is_created_still_cleans_it(seg, rng, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """The window between creating a label PNG and listing it for cleanup: a signal
    (KeyboardInterrupt) arriving there must not leave the file behind."""
    import builtins

    clip = _write_clip(tmp_path / "in.avi", _moving(rng, 4))
    real_open = builtins.open

    def open_then_interrupt(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path).endswith("000001.png") and "x" in mode:
            f.close()
            raise KeyboardInterrupt  # as if SIGINT landed just after the file appeared
        return f

    monkeypatch.setattr(video, "open", open_then_interrupt, raising=False)
    labels = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        video.segment_video(seg, clip, CLASSES, tmp_path / "o.mp4", labels_dir=labels,
                            progress=False)  # fmt: skip
    assert list(labels.iterdir()) == [] and not list(tmp_path.glob(".*partial*"))
