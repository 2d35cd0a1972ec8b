"""Video sources: files, http(s) URLs, live streams and cameras, opened through PyAV
(FFmpeg), their frames with their times, and live sources reopened when lost
(``live_frames``). ``clips4rt.video`` segments what these give."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clips4rt.errors import VideoError


def _av():
    try:
        import av
    except ImportError:
        raise VideoError(
            "reading and writing video needs PyAV: pip install 'clips4rt[video]'"
        ) from None
    return av


# network sources: http(s) files are read like files (FFmpeg resumes a cut transfer by
# HTTP Range); the others are live streams (see live_frames for reconnecting)
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp")
URL_SCHEMES = ("http", "https", *LIVE_SCHEMES)
OPEN_TIMEOUT = 10.0  # seconds to connect to a network source
READ_TIMEOUT = 10.0  # seconds without data before a network read is given up
RECONNECT = 5  # attempts to reopen a lost live source (0.5, 1, 2, 4, 8 s apart)


def _scheme(source) -> str | None:
    if not isinstance(source, str) or "://" not in source:
        return None
    scheme = source.split("://", 1)[0].lower()
    return scheme if scheme in URL_SCHEMES else None


def _camera(source) -> tuple[str, str] | None:
    """(device, FFmpeg input format) of a camera source, None for other sources: an index
    (0, "0") opens the platform's device - /dev/video0 through v4l2 on Linux, device 0
    through AVFoundation on macOS; Windows (DirectShow) names its cameras:
    "video=Integrated Camera"; "/dev/video2" is taken as is on Linux."""
    import sys

    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        n = int(source)
        if sys.platform.startswith("linux"):
            return f"/dev/video{n}", "v4l2"
        if sys.platform == "darwin":
            return f"{n}:none", "avfoundation"  # video device n, no audio
        if sys.platform == "win32":
            raise VideoError(
                f"camera {source}: on Windows give the camera by its name, e.g. "
                '"video=Integrated Camera" (list them: ffmpeg -list_devices true -f dshow -i dummy)'
            )
        raise VideoError(f"camera {source}: no camera input known for {sys.platform}")
    if isinstance(source, str) and source.startswith("video="):
        return source, "dshow"
    if isinstance(source, str) and re.fullmatch(r"/dev/video\d+", source):
        return source, "v4l2"
    return None


def is_live(source) -> bool:
    """Whether ``source`` is a live stream (a camera or an rtsp/rtmp/srt/udp/tcp URL):
    no end of its own, reconnected when lost."""
    return _camera(source) is not None or _scheme(source) in LIVE_SCHEMES


def open_source(source):
    """An opened PyAV input container for a file path, an http(s) URL of a video, a live
    stream URL (rtsp://, rtmp://, srt://, udp://, tcp://) or a camera (see ``_camera``).
    Network sources connect within OPEN_TIMEOUT seconds and give up a read after
    READ_TIMEOUT seconds without data."""
    av = _av()
    camera = _camera(source)
    if camera is not None:
        device, fmt = camera
        if fmt not in _formats(av):
            raise VideoError(f"camera {source}: this PyAV build has no {fmt} input "
                             "(install PyAV's wheel for this platform)")  # fmt: skip
        try:
            return av.open(device, format=fmt, timeout=(OPEN_TIMEOUT, READ_TIMEOUT))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot open camera {source} ({device}): {e}") from e
    scheme = _scheme(source)
    if scheme is not None:
        options = {}
        if scheme in ("http", "https"):  # a cut transfer resumes where it stopped
            options = {"reconnect": "1", "reconnect_on_network_error": "1",
                       "reconnect_delay_max": "8"}  # fmt: skip
        elif scheme in ("rtsp", "rtsps"):
            options = {"rtsp_flags": "prefer_tcp"}
        try:
            return av.open(source, options=options, timeout=(OPEN_TIMEOUT, READ_TIMEOUT))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot open {source} ({e})") from e
    if isinstance(source, str) and "://" in source:
        raise VideoError(f"{source}: unsupported URL scheme; use one of "
                         f"{', '.join(s + '://' for s in URL_SCHEMES)} or a file path")  # fmt: skip
    try:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        return av.open(str(path))
    except FileNotFoundError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open {source} as a video ({e})") from e


def _formats(av) -> set[str]:
    """Input format names of this PyAV build (FFmpeg lists aliases as "a,b")."""
    return {n for f in av.formats_available for n in f.split(",")}


def timed_frames(container) -> Iterator[tuple[np.ndarray, float | None]]:
    """(HxWx3 uint8 RGB frame, presentation time in seconds or None) of the first video
    stream, in decoding order."""
    av = _av()
    if not container.streams.video:
        raise VideoError(f"{container.name} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24"), frame.time
            index += 1
    except av.FFmpegError as e:
        raise VideoError(f"{container.name}: cannot decode frame {index} ({e})") from e


def frames(container, times: list | None = None) -> Iterator[np.ndarray]:
    """Decoded frames of the first video stream as HxWx3 uint8 RGB arrays (``times``:
    each frame's presentation time in seconds, or None, is appended there as it is
    decoded)."""
    for image, t in timed_frames(container):
        if times is not None:
            times.append(t)
        yield image


class SourceLost(VideoError):
    """A live source failed and could not be reopened (``RECONNECT`` attempts)."""


def live_frames(source, container=None, reconnect: int | None = None, delay: float = 0.5,
                opener=None) -> Iterator[tuple[np.ndarray, float | None]]:  # fmt: skip
    """``timed_frames`` of a live source that reopens it when it is lost: after an error
    or an end of stream, up to ``reconnect`` attempts ``delay``, 2x``delay``, ... (at most
    8 s) apart; frames then continue, their times carried on from the last frame's (a
    reopened stream's clock restarts). When every attempt fails: a source that had ended
    ends the iteration; one that had failed raises :class:`SourceLost` with the cause.
    ``container``: the source already opened (the first open's error is not retried);
    ``reconnect``: default :data:`RECONNECT`."""
    opener = opener or open_source
    reconnect = RECONNECT if reconnect is None else reconnect
    container = container if container is not None else opener(source)
    offset = 0.0
    last: tuple[float, float] | None = None  # (time, monotonic clock) of the last frame
    fresh = False  # the first frame after a reopen sets the offset
    while True:
        failed = None
        try:
            for image, t in timed_frames(container):
                if t is not None:
                    if fresh and last is not None:
                        offset = last[0] + (time.monotonic() - last[1]) - t
                    t += offset
                    last = (t, time.monotonic())
                fresh = False
                yield image, t
        except VideoError as e:
            failed = e
        finally:
            container.close()
        ended = failed is None
        why = failed or VideoError("the stream ended")
        for attempt in range(reconnect):
            time.sleep(min(8.0, delay * 2**attempt))
            try:
                container = opener(source)
                break
            except VideoError as e:
                why = e
        else:
            if ended:
                return
            raise SourceLost(
                f"lost {source}: {why}; {reconnect} reconnect attempts failed"
            ) from why
        fresh = True
