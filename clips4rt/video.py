"""Videos, streams and cameras through a Segmenter: ``clips4rt video IN --classes ...``
(the sources themselves: ``clips4rt.sources``).

Needs PyAV (the ``video`` extra: ``pip install clips4rt[video]``); the runtime's
base install does not. Frames are decoded, segmented with :meth:`Segmenter.stream`
(graph and post-processing pipelined) and encoded as an overlay video of the same
size and frame times. The output is written under a temporary name beside ``out``
and renamed only when the whole video is done, so a partial file never looks
complete.

The user's files are safe: the output is checked (suffix, not a folder, not the
input) before anything is decoded; one run writes an output at a time (an exclusive
lock on its temporary file, where the OS has flock); label PNGs are created
exclusively, so an existing ``000000.png`` is never overwritten (the run stops
instead), and a failed or interrupted run removes only the files it created (a live
source's run keeps its outputs: see ``segment_video``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from clips4rt.errors import VideoError
from clips4rt.sources import (  # noqa: F401 - re-exported (settings: clips4rt.sources)
    SourceLost,
    _av,
    _camera,
    frames,
    is_live,
    live_frames,
    open_source,
    timed_frames,
)
from clips4rt.stream import newest
from clips4rt.visualize import label_png

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked against a second run
    fcntl = None

# container suffix -> encoders to try, best first
_CODECS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".avi": ("mpeg4", "mjpeg"),
    ".webm": ("libvpx", "libvpx-vp9"),
}


# the output's clock where the source's own is finer than the mpeg4 encoder takes (at
# most 65535 ticks a second: rtsp's 1/90000) or unknown: milliseconds
TIME_BASE = Fraction(1, 1000)


def _encoder(av, path: Path, width: int, height: int, rate: Fraction, time_base: Fraction):
    codecs = _CODECS[path.suffix.lower()]  # checked by _check_out
    out = av.open(str(path), "w")
    for name in codecs:
        if name not in av.codecs_available:
            continue
        # no B-frames: with them the mp4 muxer derives a variable-rate video's length
        # from reordered decode times (a 9 s clip came out 4.2 s long)
        stream = out.add_stream(name, rate=rate, options={"bf": "0"} if name == "libx264" else {})
        stream.codec_context.time_base = time_base  # frames keep their source times
        stream.width, stream.height = width, height
        # 4:2:0 needs even sizes; odd frames keep their size in 4:4:4 (libx264)
        even = width % 2 == 0 and height % 2 == 0
        stream.pix_fmt = "yuv420p" if even or not name.startswith("libx264") else "yuv444p"
        return out, stream
    out.close()
    raise VideoError(f"no encoder for {path.suffix} in this PyAV build (tried {codecs})")


def segment_video(
    segmenter,
    source,
    classes: list[str],
    out=None,
    *,
    labels_dir=None,
    jsonl=None,
    polygons: bool = False,
    tolerance: float = 1.0,
    progress: bool = True,
    max_frames: int | None = None,
    latest: bool = False,
    **options,
) -> dict:
    """Segment every frame of ``source`` (path or camera index) and write the overlay
    video to ``out``, label PNGs ``000000.png``... to ``labels_dir`` and/or one JSON line
    per frame to ``jsonl`` (at least one of the three): ``{"frame": i, "time": seconds
    or null, "share": {class: fraction of the pixels}, "background": fraction}``, with
    ``polygons``: ``"polygons": {class: [[x1, y1, x2, y2, ...], ...]}`` (pixels,
    ``clips4rt.labels.polygons`` within ``tolerance``; needs ``clips4rt[labels]``).

    ``source``: a file, an http(s) URL of a video, a live stream (rtsp://, rtmp://,
    srt://, udp://, tcp://) or a camera (0 = the first; "video=NAME" on Windows). The
    overlay video keeps each frame's source time, so a variable-frame-rate input keeps
    its length. ``latest=True`` (live sources slower to segment than to deliver): only
    the newest frame is segmented, the others are dropped (``clips4rt.stream.newest``).

    A live source runs until ``max_frames``, Ctrl-C / SIGTERM, or its end; a lost one is
    reopened (``live_frames``). There the outputs so far are kept: Ctrl-C ends the run
    normally, and a source lost for good raises :class:`SourceLost` after the outputs
    are complete.

    Returns a summary: frames, seconds, fps, dropped (``latest``), and each class's
    share of all pixels. Raises VideoError (missing codec, unreadable or empty input,
    unwritable output) or FileNotFoundError; ``out`` and ``jsonl`` then do not exist
    (a file or http(s) video: an interrupted run leaves nothing).
    """
    av = _av()
    if out is None and jsonl is None and labels_dir is None:
        raise VideoError("nothing to write: give --out (overlay video), --jsonl or --labels-dir")
    if polygons and jsonl is None:
        raise VideoError("--polygons go into the --jsonl lines: give --jsonl FILE too")
    if polygons:
        from clips4rt.labels import polygons as to_polygons
        from clips4rt.labels import require

        require("cv2")
    if out is not None:
        out = _check_out(Path(out).expanduser(), source)
    if jsonl is not None:
        jsonl = _check_jsonl(Path(jsonl).expanduser(), source)
        if out is not None and jsonl.resolve() == out.resolve():
            raise VideoError(f"--out and --jsonl both name {out}: give two files")
    if labels_dir is not None:
        labels_dir = Path(labels_dir).expanduser()
        taken = sorted(labels_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"))[:3]
        if taken:
            names = ", ".join(p.name for p in taken)
            raise VideoError(
                f"--labels-dir {labels_dir} already holds label PNGs ({names}, ...): choose an "
                "empty or new folder (existing files are never overwritten)"
            )
        labels_dir.mkdir(parents=True, exist_ok=True)
    # each file output is written under a hidden temporary name, locked, renamed at the end
    targets = [t for t in (out, jsonl) if t is not None]
    partials = [t.with_name(f".{t.stem}.partial{t.suffix}") for t in targets]
    locks: list[int] = []
    try:
        for t, p in zip(targets, partials):
            locks.append(_lock(p, t))
        container = open_source(source)
    except BaseException:
        for fd, p in zip(locks, partials):
            _unlock(fd, p)
        raise
    partial = partials[0] if out is not None else None
    clock = _Clock(container)
    dropped: list[int] = []  # frames latest=True skipped
    stopped: list[BaseException] = []  # why a live source's run ended early
    lines = None
    written: list[Path] = []  # label PNGs of this run, removed if it fails
    counts = np.zeros(len(classes) + 1, np.int64)
    n = 0
    encoder = None
    t0 = time.perf_counter()
    try:
        if jsonl is not None:
            lines = open(partials[-1], "w", encoding="utf-8")  # noqa: SIM115 - closed below
        stream = container.streams.video[0] if container.streams.video else None
        rate = clock.rate
        total = stream.frames if stream is not None and stream.frames else None
        if max_frames is not None:
            total = min(total or max_frames, max_frames)
        bar = _progress(progress, total)
        live = is_live(source)
        pairs = (
            live_frames(source, container, opener=open_source) if live else timed_frames(container)
        )
        if latest:
            pairs = newest(pairs, dropped)
        times: collections.deque = collections.deque()

        def arrays():  # the stream's frames; their times wait here in the same order
            try:
                for image, t in pairs:
                    times.append(t)
                    yield image
            finally:
                pairs.close()

        results = segmenter.stream(arrays(), classes, prefetch=1 if latest else 2, **options)
        try:
            for r in _until_stopped(results, live, stopped):
                stamp = times.popleft() if times else None  # results come in decoding order
                frame_counts = np.bincount(r.labels.ravel() + 1, minlength=len(classes) + 1)
                counts += frame_counts
                if lines is not None:
                    rec = _jsonl_record(n, stamp, frame_counts, classes)
                    if polygons:
                        rec["polygons"] = {
                            c: [p.astype(int).ravel().tolist()
                                for p in to_polygons(r.labels == k, tolerance)]
                            for k, c in enumerate(classes) if frame_counts[k + 1]
                        }  # fmt: skip
                    try:
                        lines.write(json.dumps(rec) + "\n")
                    except OSError as e:
                        raise VideoError(f"cannot write {jsonl} ({e})") from e
                if out is not None:  # the overlay: drawn only when a video is asked for
                    if encoder is None:
                        h, w = r.labels.shape
                        try:
                            encoder = _encoder(av, partial, w, h, rate, clock.time_base)
                        except (av.FFmpegError, OSError) as e:
                            raise VideoError(f"cannot write {out} ({e})") from e
                    frame = av.VideoFrame.from_ndarray(np.asarray(r.overlay()), format="rgb24")
                    frame.time_base = clock.time_base
                    frame.pts = clock.pts(stamp)
                    _encode(av, encoder, frame, out)
                if labels_dir is not None:
                    path = labels_dir / f"{n:06d}.png"
                    # listed before it exists: a signal right after the open must still
                    # find it in the cleanup list (removing a missing file is a no-op)
                    written.append(path)
                    try:
                        f = open(path, "xb")  # never over a file this run did not create
                    except FileExistsError:
                        written.pop()  # another process's file: not ours to remove
                        raise VideoError(f"--labels-dir: {path} appeared during the run (another "
                                         "process writes there); stopped") from None  # fmt: skip
                    with f:
                        label_png(r.labels, len(classes)).save(f, format="PNG")
                n += 1
                if bar is not None:
                    bar.update(1)
                if max_frames is not None and n >= max_frames:
                    break
        except KeyboardInterrupt as e:  # a live recording ends here, its outputs kept
            if not live:
                raise
            stopped.append(e)
            if len(written) > n:  # the frame being written when it came
                written.pop().unlink(missing_ok=True)
        finally:
            results.close()
            if bar is not None:
                bar.close()
        if n == 0:
            if stopped and isinstance(stopped[0], SourceLost):
                raise stopped[0]
            raise VideoError(f"{source}: the video has no frames")
        if out is not None:
            _encode(av, encoder, None, out)  # flush
            encoder[0].close()
            encoder = None
        if lines is not None:
            try:
                lines.close()
            except OSError as e:
                raise VideoError(f"cannot write {jsonl} ({e})") from e
        for t, p in zip(targets, partials):
            os.replace(p, t)
    except BaseException:
        if encoder is not None:
            try:
                encoder[0].close()
            except Exception:  # noqa: BLE001 - the original error matters
                pass
        if lines is not None:
            with contextlib.suppress(OSError):
                lines.close()
        for p in partials:
            p.unlink(missing_ok=True)
        for f in written:
            f.unlink(missing_ok=True)
        raise
    finally:
        container.close()
        for fd in locks:
            _unlock(fd, None)
    seconds = time.perf_counter() - t0
    share = counts / max(1, counts.sum())
    if stopped and not isinstance(stopped[0], KeyboardInterrupt):
        kept = ", ".join(str(t) for t in targets + ([labels_dir] if labels_dir else []))
        raise SourceLost(f"{stopped[0]}; the {n} frames before it are in {kept}") from stopped[0]
    return {
        "frames": n,
        "seconds": round(seconds, 3),
        "fps": round(n / seconds, 2),
        "dropped": sum(dropped),
        "interrupted": bool(stopped),
        "out": None if out is None else str(out),
        "jsonl": None if jsonl is None else str(jsonl),
        "share": {c: float(share[k + 1]) for k, c in enumerate(classes) if share[k + 1] > 0},
        "background": float(share[0]),
    }


class _Clock:
    """Output frame times from source times, in the source's own time base (TIME_BASE
    where that is finer than 1/65535 s): the first frame at 0, each later one at its own
    time (variable frame rates kept), always after the one before; a frame without a
    time comes one period (of the stated rate, else 25 fps) after the last."""

    def __init__(self, container):
        stream = container.streams.video[0] if container.streams.video else None
        rate = (stream.average_rate or stream.guessed_rate) if stream is not None else None
        self.rate = Fraction(rate) if rate else Fraction(25)
        tb = stream.time_base if stream is not None else None
        fine = tb is not None and tb.numerator == 1 and tb.denominator <= 65535
        self.time_base = Fraction(tb) if fine else TIME_BASE
        self.step = max(1, round(1 / (self.rate * self.time_base)))
        self.start: float | None = None
        self.last = -1

    def pts(self, t: float | None) -> int:
        if t is None or (self.start is None and self.last >= 0):
            pts = self.last + self.step if self.last >= 0 else 0
        else:
            if self.start is None:
                self.start = t
            pts = round((t - self.start) / self.time_base)
        self.last = max(pts, self.last + 1)
        return self.last


def _until_stopped(results, live: bool, stopped: list) -> Iterator:
    """The results; for a live source, Ctrl-C (or SIGTERM) and a lost source end the
    iteration after the frames before them (the reason in ``stopped``), so that what
    was recorded is kept."""
    while True:
        try:
            r = next(results)
        except StopIteration:
            return
        except (KeyboardInterrupt, SourceLost) as e:
            if not live:
                raise
            stopped.append(e)
            return
        try:
            yield r
        except GeneratorExit:
            return


def _check_out(out: Path, source) -> Path:
    """The output path, checked before anything is decoded."""
    if out.suffix.lower() not in _CODECS:
        raise VideoError(f"--out {out}: use one of {', '.join(_CODECS)} as the file suffix")
    if out.is_dir():
        raise VideoError(f"--out {out} is a folder: give a file name like {out / 'overlay.mp4'}")
    if not out.parent.is_dir():
        raise VideoError(f"--out {out}: folder {out.parent} does not exist")
    src = Path(str(source)).expanduser()
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise VideoError(f"--out {out} is the input video: choose another name (the input "
                         "would be replaced)")  # fmt: skip
    return out


def _jsonl_record(n: int, stamp, counts: np.ndarray, classes) -> dict:
    total = max(1, int(counts.sum()))
    return {
        "frame": n,
        "time": None if stamp is None else round(float(stamp), 6),
        "share": {
            c: round(int(counts[k + 1]) / total, 6) for k, c in enumerate(classes) if counts[k + 1]
        },  # fmt: skip
        "background": round(int(counts[0]) / total, 6),
    }


def _check_jsonl(path: Path, source) -> Path:
    """The --jsonl path, checked like --out before anything is decoded."""
    if path.is_dir():
        raise VideoError(f"--jsonl {path} is a folder: give a file name like "
                         f"{path / 'frames.jsonl'}")  # fmt: skip
    if not path.parent.is_dir():
        raise VideoError(f"--jsonl {path}: folder {path.parent} does not exist")
    src = Path(str(source)).expanduser()
    if path.exists() and src.exists() and os.path.samefile(path, src):
        raise VideoError(f"--jsonl {path} is the input video: choose another name")
    return path


def _lock(partial: Path, out: Path) -> int:
    """An exclusive lock on this output's temporary file (created if missing; a stale
    one left by a killed run is taken over): one writer per output path."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    if fcntl is None:  # no flock: nothing held open (Windows renames no open file)
        os.close(fd)
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VideoError(f"another clips4rt video is writing {out}: wait for it, or choose "
                         "another --out") from None  # fmt: skip
    return fd


def _unlock(fd: int, partial: Path | None) -> None:
    if partial is not None:  # failed before any frame: the empty temporary goes too
        partial.unlink(missing_ok=True)
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _encode(av, encoder, frame, out: Path) -> None:
    """Encode one frame (None: flush) and mux its packets; errors name the output."""
    try:
        for packet in encoder[1].encode(frame):
            encoder[0].mux(packet)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"cannot write {out} ({e})") from e


def _progress(enabled: bool, total):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the video extra; without it, no bar
        return None
    return tqdm(total=total, unit="frame", desc="clips4rt video", smoothing=0.1)
