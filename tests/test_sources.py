"""Sources beyond local files: images and videos over HTTP (a server on 127.0.0.1 stands
in for the network), live streams that are lost and reopened, cameras per platform,
variable frame rates kept, and --latest keeping each frame's time."""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
import time
from fractions import Fraction
from importlib import resources

import numpy as np
import pytest
from PIL import Image

import clips4rt
from clips4rt import net
from clips4rt.cli import main
from clips4rt.stream import pipelined

av = pytest.importorskip("av", reason="the `video` extra (PyAV) is not installed")
video = pytest.importorskip("clips4rt.video")
sources = pytest.importorskip("clips4rt.sources")

TOY = ["sky", "grass", "water", "sand", "brick wall", "snow", "ball", "star", "tree", "car",
       "pyramid"]  # fmt: skip


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with HTTP Range; a few paths misbehave on purpose."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: C901 - one branch per misbehaviour
        srv, path = self.server, self.path.split("?")[0]
        srv.hits[path] = srv.hits.get(path, 0) + 1
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")  # urllib would follow
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/huge.png":  # states a size over any limit
            self.send_response(200)
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
            return
        if path == "/endless.png":  # no size stated, bytes without end
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with_chunk = b"%x\r\n%s\r\n" % (1 << 16, b"\0" * (1 << 16))
            try:
                for _ in range(10_000):
                    self.wfile.write(with_chunk)
            except OSError:
                pass
            return
        if path == "/slow.png":  # a byte every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        name = path.removeprefix("/cut")
        body = srv.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        part = body[start:]
        if path.startswith("/cut/") and srv.hits[path] == 1:  # the first transfer breaks
            part = part[: len(part) // 3]
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.hits = {}, {}
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def toy():
    return clips4rt.Segmenter(threads=2)


def _scene() -> Image.Image:
    return Image.open(resources.files("clips4rt") / "data" / "demo_scene.png").convert("RGB")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- images by URL


def test_segment_images_by_url(server, tmp_path, toy):
    scene = _scene()
    (tmp_path / "in").mkdir()
    scene.save(tmp_path / "in" / "x.png")
    flipped = scene.transpose(Image.FLIP_LEFT_RIGHT)
    server.files["/a/x.png"] = _png(scene)
    server.files["/b/photo.jpg"] = _png(flipped)  # the name decides nothing: PNG content
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "in"), f"{server.url}/a/x.png",
               f"{server.url}/b/photo.jpg?size=large", "--classes", ",".join(TOY),
               "--out", str(out), "--threads", "2", "--quiet"])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classes.txt", "photo_labels.png", "photo_overlay.png", "x.png_labels.png",
                     "x.png_overlay.png", "x.png~2_labels.png", "x.png~2_overlay.png"]  # fmt: skip
    local = np.asarray(Image.open(out / "x.png_labels.png"))
    remote = np.asarray(Image.open(out / "x.png~2_labels.png"))
    np.testing.assert_array_equal(local, remote)  # the same bytes, the same labels
    direct = toy.run(np.asarray(flipped), TOY).labels
    np.testing.assert_array_equal(toy.run(f"{server.url}/b/photo.jpg", TOY).labels, direct)


def test_url_names_stay_inside_the_output_folder():
    from clips4rt.inputs import url_name as _url_name

    assert _url_name("https://h/a/photo.jpg?x=1#y") == "photo.jpg"
    for url in ("https://h/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "https://h/..", "https://h/.x",
                "https://h/a%00b", "https://h/" + "a" * 500):  # fmt: skip
        name = _url_name(url)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert "\0" not in name and 0 < len(name) <= 120
    assert _url_name("https://host.example/") == "host.example"


def test_fetch_is_bounded_in_size_and_time(server):
    server.files["/x.png"] = data = _png(_scene())
    assert net.fetch(f"{server.url}/x.png") == data
    with pytest.raises(clips4rt.ImageError, match="over the 1000 byte limit"):
        net.fetch(f"{server.url}/x.png", max_bytes=1000)  # refused by its Content-Length
    t0 = time.monotonic()
    with pytest.raises(clips4rt.ImageError, match="over the"):
        net.fetch(f"{server.url}/huge.png")
    with pytest.raises(clips4rt.ImageError, match="more than the 1000000 byte limit"):
        net.fetch(f"{server.url}/endless.png", max_bytes=10**6)  # counted while reading
    with pytest.raises(clips4rt.ImageError, match="not received within 1 s"):
        net.fetch(f"{server.url}/slow.png", timeout=1.0)  # a byte a time: the whole fetch
    assert time.monotonic() - t0 < 8
    with pytest.raises(clips4rt.ImageError, match="HTTP 404"):
        net.fetch(f"{server.url}/missing.png")
    with pytest.raises(clips4rt.ImageError, match="not http"):
        net.fetch(f"{server.url}/redirect")
    with pytest.raises(clips4rt.ImageError, match="cannot fetch"):
        net.fetch("http://127.0.0.1:1/x.png")  # nothing listens on port 1


def test_url_images_keep_the_decoding_limits(server, toy):
    server.files["/x.png"] = _png(_scene())
    with pytest.raises(clips4rt.ImageError, match="over the limit of 1000"):
        clips4rt.images.load_image(f"{server.url}/x.png", max_pixels=1000)
    server.files["/x.eps"] = b"%!PS-Adobe-3.0 EPSF-3.0\n"  # a format the files refuse too
    with pytest.raises(clips4rt.ImageError, match="not an image file of a supported format"):
        toy.run(f"{server.url}/x.eps", TOY)


# ---------------------------------------------------------------- video by URL


def _clip(path, n=8, rate=10, size=(48, 64), times=None, codec="mpeg4"):
    """A clip whose frame i is gray 12 * i (so a frame tells its index), at ``times``
    (seconds; default i / rate)."""
    out = av.open(str(path), "w")
    s = out.add_stream(codec, rate=rate)
    s.height, s.width = size
    s.pix_fmt = "yuv420p"
    tb = Fraction(1, 1000)
    s.codec_context.time_base = tb
    for i in range(n):
        f = av.VideoFrame.from_ndarray(np.full((*size, 3), 12 * i % 256, np.uint8), "rgb24")
        f.time_base, f.pts = tb, round((i / rate if times is None else times[i]) / tb)
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_over_http_and_a_cut_transfer_resumed(server, tmp_path, toy):
    clip = _clip(tmp_path / "in.mkv", n=40)
    server.files["/clip.mkv"] = clip.read_bytes()
    local = video.segment_video(toy, str(clip), TOY, jsonl=tmp_path / "local.jsonl",
                                progress=False)  # fmt: skip
    remote = video.segment_video(toy, f"{server.url}/clip.mkv", TOY,
                                 jsonl=tmp_path / "remote.jsonl", progress=False)  # fmt: skip
    assert local["frames"] == remote["frames"] == 40
    assert _lines(tmp_path / "local.jsonl") == _lines(tmp_path / "remote.jsonl")
    # the first transfer breaks after a third: FFmpeg asks for the rest (HTTP Range)
    cut = video.segment_video(toy, f"{server.url}/cut/clip.mkv", TOY,
                              jsonl=tmp_path / "cut.jsonl", progress=False)  # fmt: skip
    assert server.hits["/cut/clip.mkv"] >= 2 and cut["frames"] == 40
    assert _lines(tmp_path / "cut.jsonl") == _lines(tmp_path / "local.jsonl")


def test_unreachable_sources_fail_fast_and_leave_nothing(server, tmp_path, toy):
    out = tmp_path / "o.mp4"
    for url, words in ((f"{server.url}/missing.mkv", "404"),
                       ("http://127.0.0.1:1/clip.mkv", "cannot open"),
                       ("rtsp://127.0.0.1:1/live", "cannot open"),
                       ("gopher://127.0.0.1/x", "unsupported URL scheme")):  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(clips4rt.VideoError, match=words):
            video.segment_video(toy, url, TOY, out, progress=False)
        assert time.monotonic() - t0 < sources.OPEN_TIMEOUT + 5
        assert list(tmp_path.iterdir()) == []
    assert main(["video", "rtsp://127.0.0.1:1/live", "--classes", "sky", "--out", str(out)]) == 2


# ---------------------------------------------------------------- live sources


class _Source:
    """A live source made of a clip: ``plan`` says what each open does - "ok" (all its
    frames, then the stream ends), "break" (an error after 3 frames), "refuse"."""

    def __init__(self, clip, plan):
        self.clip, self.plan, self.opens = clip, list(plan), 0

    def __call__(self, source):
        self.opens += 1
        step = self.plan.pop(0) if self.plan else "refuse"
        if step == "refuse":
            raise clips4rt.VideoError("cannot open rtsp://camera (Connection refused)")
        container = av.open(str(self.clip))
        if step == "break":
            _BREAKS.add(id(container))
        return container


_BREAKS: set[int] = set()  # containers (by id) whose decoding fails after 3 frames


def _breaking(real):
    def timed(container):
        for i, pair in enumerate(real(container)):
            if id(container) in _BREAKS and i == 3:
                raise clips4rt.VideoError("rtsp://camera: cannot decode frame 3 (I/O error)")
            yield pair

    return timed


def test_live_source_is_reopened_and_its_clock_carried_on(tmp_path, monkeypatch):
    clip = _clip(tmp_path / "in.mkv", n=6)
    monkeypatch.setattr(sources, "timed_frames", _breaking(sources.timed_frames))
    source = _Source(clip, ["break", "refuse", "ok"])
    got = list(sources.live_frames("rtsp://camera", reconnect=3, delay=0.01, opener=source))
    # the break, a refused reopen, a good one to its end, then 3 refused: it has ended
    assert source.opens == 6
    assert len(got) == 3 + 6
    times = [t for _, t in got]
    assert all(b > a for a, b in zip(times, times[1:]))  # the reopened clock continues
    # every attempt refused after an error: lost, with the cause
    source = _Source(clip, ["break"])
    with pytest.raises(video.SourceLost, match="3 reconnect attempts failed"):
        list(sources.live_frames("rtsp://camera", reconnect=3, delay=0.01, opener=source))
    assert source.opens == 4


def test_lost_or_interrupted_live_source_keeps_its_outputs(tmp_path, monkeypatch, toy):
    clip = _clip(tmp_path / "in.mkv", n=6)
    monkeypatch.setattr(sources, "timed_frames", _breaking(sources.timed_frames))
    monkeypatch.setattr(sources, "RECONNECT", 1)
    source = _Source(clip, ["ok", "break"])
    monkeypatch.setattr(video, "open_source", source)
    monkeypatch.setattr(video, "is_live", lambda s: True)
    monkeypatch.setattr(video.time, "sleep", lambda s: None)
    out, lines = tmp_path / "rec.mkv", tmp_path / "rec.jsonl"
    with pytest.raises(video.SourceLost, match="the 9 frames before it are in"):
        video.segment_video(toy, "rtsp://camera", TOY, out, jsonl=lines, progress=False)
    assert len(_lines(lines)) == 9
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    # Ctrl-C ends a live run normally, the outputs complete
    out.unlink(), lines.unlink()
    source.plan, source.opens = ["ok"], 0
    real = video._encode
    calls = []

    def interrupted(av_, encoder, frame, path):
        calls.append(frame)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(av_, encoder, frame, path)

    monkeypatch.setattr(video, "_encode", interrupted)
    summary = video.segment_video(toy, "rtsp://camera", TOY, out, jsonl=lines, progress=False)
    assert summary["interrupted"] and summary["frames"] == 3
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 3


def test_cameras_per_platform(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    assert video._camera(0) == ("/dev/video0", "v4l2")
    assert video._camera("/dev/video2") == ("/dev/video2", "v4l2")
    monkeypatch.setattr("sys.platform", "darwin")
    assert video._camera("1") == ("1:none", "avfoundation")
    monkeypatch.setattr("sys.platform", "win32")
    assert video._camera("video=Integrated Camera") == ("video=Integrated Camera", "dshow")
    with pytest.raises(clips4rt.VideoError, match="video=Integrated Camera"):
        video._camera(0)
    assert video._camera("clip.mp4") is None and video._camera("rtsp://x/1") is None
    assert video.is_live("rtsp://x/1") and video.is_live("video=Cam")
    assert not video.is_live("https://x/clip.mp4") and not video.is_live("clip.mp4")


# ---------------------------------------------------------------- time


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm"])
def test_variable_frame_rate_keeps_its_times(tmp_path, toy, suffix):
    times = [0.0, 0.1, 0.15, 1.0, 1.02, 2.5, 4.0, 4.04, 6.0, 8.9]  # 9 s in 10 frames
    clip = _clip(tmp_path / "vfr.mkv", n=len(times), times=times, rate=25)
    out = tmp_path / f"o{suffix}"
    video.segment_video(toy, str(clip), TOY, out, progress=False)
    with av.open(str(clip)) as c:
        src = c.duration / 1e6
    with av.open(str(out)) as c:
        got = [f.time for f in c.decode(video=0)]
        length = c.duration / 1e6
    np.testing.assert_allclose(got, times, atol=1e-3)
    assert abs(length - src) <= 0.05 * src, (length, src)


class _Tagger:
    """A stand-in segmenter (``delay`` s a frame): each result's labels say which frame
    it was (gray 12 * i -> class i), so its JSON line tells the frame and its time."""

    def __init__(self, delay=0.0):
        self.delay = delay

    def stream(self, frames, classes, prefetch=2, **options):
        def produce(frame):  # pipelined as Segmenter.stream is: the next frame is taken early
            time.sleep(self.delay)
            return _Result(np.full((4, 4), round(int(frame[0, 0, 0]) / 12), np.int32))

        return pipelined(frames, produce, lambda r: r, prefetch)


class _Result:
    def __init__(self, labels):
        self.labels = labels


def test_latest_drops_frames_but_keeps_each_kept_frames_time(tmp_path):
    rate = 100
    clip = _clip(tmp_path / "in.mkv", n=12, rate=rate)
    names = [f"c{i}" for i in range(12)]
    summary = video.segment_video(_Tagger(0.02), str(clip), names, jsonl=tmp_path / "l.jsonl",
                                  progress=False, latest=True)  # fmt: skip
    lines = _lines(tmp_path / "l.jsonl")
    assert summary["dropped"] > 0 and summary["frames"] + summary["dropped"] == 12
    for line in lines:
        (name,) = line["share"]
        assert line["time"] == pytest.approx(int(name[1:]) / rate, abs=1e-3)


_SENDER = """
import sys, time
from fractions import Fraction
import av, numpy as np
port, parts, n = map(int, sys.argv[1:4])
for part in range(parts):  # each part: listen, stream n frames to the client, hang up
    o = av.open(f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=20000", "w", format="mpegts")
    s = o.add_stream("mpeg4", rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.codec_context.time_base = Fraction(1, 25)
    for i in range(part * n, part * n + n):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i % 256, np.uint8), "rgb24")
        f.pts, f.time_base = i, Fraction(1, 25)
        for p in s.encode(f):
            o.mux(p)
        time.sleep(0.02)
    for p in s.encode():
        o.mux(p)
    o.close()
"""


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port (Linux's /proc/net/tcp), found without
    connecting to it."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[1] == f"0100007F:{port:04X}" and r[3] == "0A" for r in rows)


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_live_tcp_stream_lost_and_reopened(tmp_path, monkeypatch):
    """A real live stream (MPEG-TS over TCP from another process on 127.0.0.1) that hangs
    up after 10 frames and comes back for 10 more: the run reconnects and keeps all 20
    frames, in order, with times that go on; it ends when the source does not return."""
    import socket
    import subprocess
    import sys

    monkeypatch.setattr(sources, "RECONNECT", 2)  # 0.5 s and 1 s: the end is found sooner
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(port), "2", "10"])
    try:
        for _ in range(200):
            if _listening(port):
                break
            time.sleep(0.05)
        lines = tmp_path / "live.jsonl"
        names = [f"c{i}" for i in range(20)]
        summary = video.segment_video(_Tagger(), f"tcp://127.0.0.1:{port}", names,
                                      jsonl=lines, progress=False)  # fmt: skip
    finally:
        sender.wait(timeout=30)
    assert summary["frames"] == 20 and not summary["interrupted"]
    assert [next(iter(line["share"])) for line in _lines(lines)] == names
    times = [line["time"] for line in _lines(lines)]
    assert all(b > a for a, b in zip(times, times[1:]))
