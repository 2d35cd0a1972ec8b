"""Segmenter.stream (pipelined frames), lazy result fields and the on-disk text cache."""

import threading

import numpy as np
import pytest

import clips4rt
from clips4rt import kernels as cpu
from clips4rt.stream import pipelined

CLASSES = ["cat", "dog", "sky", "grass"]


@pytest.fixture(scope="module")
def seg(bundles):
    return clips4rt.Segmenter(bundles["maskclip"], threads=2)


def _frames(rng, n, shapes=((45, 70), (64, 48), (45, 70))):
    return [rng.integers(0, 256, (*shapes[i % len(shapes)], 3), np.uint8) for i in range(n)]


def _stream_threads():
    return [t for t in threading.enumerate() if t.name == "clips4rt-stream"]


def test_stream_equals_run(seg, rng):
    frames = _frames(rng, 7)
    for opts in ({}, {"threshold": 0.3}, {"background": ["sky"], "size": 48}):
        got = list(
            seg.stream(iter(frames), CLASSES[:3] if "background" in opts else CLASSES, **opts)
        )
        assert len(got) == len(frames)
        for f, r in zip(frames, got):
            ref = seg.run(f, CLASSES[:3] if "background" in opts else CLASSES, **opts)
            np.testing.assert_array_equal(r.labels, ref.labels)
            np.testing.assert_array_equal(r.scores, ref.scores)
            np.testing.assert_array_equal(r.similarity, ref.similarity)
            assert r.labels.shape == f.shape[:2]
    assert not _stream_threads()


def test_lazy_scores_equal_the_full_kernel(seg, rng):
    img = _frames(rng, 1)[0]
    r = seg.run(img, CLASSES)  # threshold 0: labels now, the rest on access
    assert r._scores is None and r._similarity is None
    emb = seg.embed(seg._resize(img, *seg.working_size(45, 70))[None])[0]
    labels, sims, probs = cpu.match_upsample(
        emb, seg.text_embeddings(CLASSES), (45, 70), seg.info.logit_scale, n_classes=4
    )
    np.testing.assert_array_equal(r.labels, labels)
    np.testing.assert_array_equal(r.scores, probs)
    np.testing.assert_array_equal(r.similarity, sims)
    assert r._finish is None  # the embeddings were released


def test_stream_raises_at_the_bad_frame_and_stops(seg, rng):
    frames = _frames(rng, 5)
    frames[2] = np.zeros((10, 10, 5), np.uint8)  # 5 channels: not an image
    got = []
    with pytest.raises(clips4rt.ImageError, match="5 channels"):
        for r in seg.stream(frames, CLASSES):
            got.append(r)
    assert len(got) == 2
    assert not _stream_threads()

    def failing():
        yield frames[0]
        raise OSError("camera unplugged")

    it = seg.stream(failing(), CLASSES)
    assert next(it).labels.shape == (45, 70)
    with pytest.raises(OSError, match="unplugged"):
        next(it)


def test_stream_memory_is_bounded_and_close_stops_the_worker(seg, rng):
    frame = _frames(rng, 1)[0]
    pulled = []

    def endless():
        while True:
            pulled.append(1)
            yield frame

    it = seg.stream(endless(), CLASSES, prefetch=2)
    next(it)
    deadline = threading.Event()
    deadline.wait(0.5)  # let the worker run ahead as far as it can
    assert len(pulled) <= 1 + 2 + 2  # the one consumed, the queue, one in hand, one read
    it.close()
    assert not _stream_threads()
    n = len(pulled)
    deadline.wait(0.1)
    assert len(pulled) == n  # nothing is read after close


def test_stream_reads_ahead_by_prefetch_frames_two_by_default(seg):
    """After the first result the worker runs ahead by a fixed number of frames plus
    ``prefetch`` (the queue) and stops there; the default behaves as the documented
    prefetch=2."""
    import time

    frame = np.zeros((48, 64, 3), np.uint8)

    def ahead(**kw) -> int:
        pulled = []

        def endless():
            while True:
                pulled.append(1)
                yield frame

        it = seg.stream(endless(), CLASSES, **kw)
        next(it)
        seen, t0 = -1, time.monotonic()
        while len(pulled) != seen and time.monotonic() - t0 < 20:
            seen = len(pulled)
            time.sleep(1.0)  # no growth for a second: the worker waits on the full queue
        it.close()
        return seen

    two = ahead(prefetch=2)
    assert ahead(prefetch=1) == two - 1 and ahead(prefetch=3) == two + 1
    assert ahead() == two


def test_stream_checks_options_at_once(seg):
    with pytest.raises(ValueError, match="duplicate"):
        seg.stream([], ["a", "a"])
    with pytest.raises(ValueError, match="prefetch"):
        seg.stream([], CLASSES, prefetch=0)
    with pytest.raises(ValueError, match="stride"):
        seg.stream([], CLASSES, size=1)
    assert list(seg.stream([], CLASSES)) == []


def test_pipelined_keeps_order_and_runs_concurrently():
    produced = threading.Event()

    def produce(x):
        if x == 1:
            produced.set()  # produced while 0 is being consumed
        return x * 10

    def consume(v):
        if v == 0:
            assert produced.wait(5), "the producer did not run ahead"
        return v + 1

    assert list(pipelined(range(6), produce, consume, depth=2)) == [1, 11, 21, 31, 41, 51]
    with pytest.raises(ValueError, match="depth"):
        list(pipelined([], produce, consume, depth=0))


# ------------------------------------------------------------------------ text cache
def test_disk_cache_skips_the_text_graph(bundles, tmp_path, monkeypatch):
    cold = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)
    first = cold.text_embeddings(CLASSES)
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == len(CLASSES)
    warm = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)

    def no_text_graph(*a, **k):
        raise AssertionError("the text graph ran despite the cache")

    monkeypatch.setattr(warm._text, "run", no_text_graph)
    np.testing.assert_array_equal(warm.text_embeddings(CLASSES), first)
    monkeypatch.undo()
    # other templates are other entries
    warm.text_embeddings(CLASSES[:1], templates=["a sketch of a {}."])
    assert len(list(tmp_path.rglob("*.npy"))) == len(CLASSES) + 1
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary file left behind


def test_disk_cache_ignores_and_rewrites_corrupt_files(bundles, tmp_path):
    seg = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)
    good = seg.text_embeddings(CLASSES)
    files = sorted(tmp_path.rglob("*.npy"))
    files[0].write_bytes(b"\x93NUMPY garbage")
    np.save(files[1], np.full(good.shape[1], np.nan, np.float32))
    np.save(files[2], np.ones(3, np.float32))
    fresh = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)
    # 3 recomputed in another batch than the first time: ulps at most (exact here)
    np.testing.assert_allclose(fresh.text_embeddings(CLASSES), good, rtol=0, atol=1e-6)
    again = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)
    for f in files[:3]:  # rewritten with valid vectors
        v = np.load(f)
        assert v.shape == (good.shape[1],) and np.isfinite(v).all()
    np.testing.assert_allclose(again.text_embeddings(CLASSES), good, rtol=0, atol=1e-6)


def test_disk_cache_is_keyed_by_the_text_graph(bundles, tmp_path):
    a = clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path)
    b = clips4rt.Segmenter(bundles["sclip"], cache_dir=tmp_path)  # the same text graph
    toy = clips4rt.Segmenter(cache_dir=tmp_path)  # the embedded model: another one
    assert a.info.text_model_sha256 == b.info.text_model_sha256 != toy.info.text_model_sha256
    for seg in (a, b, toy):
        seg.text_embeddings(CLASSES)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # shared, and kept apart
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir"):
        clips4rt.Segmenter(bundles["maskclip"], cache_dir=tmp_path / "a_file" / "sub")


def test_repeated_prompts_are_remembered_but_never_stale(seg, rng):
    img = _frames(rng, 1)[0]
    a = seg.run(img, CLASSES)
    b = seg.run(img, CLASSES[:2])
    assert b.classes == CLASSES[:2] and (b.labels < 2).all()
    gen = seg.run(img, (c for c in CLASSES))  # a generator is read once, not memoised
    np.testing.assert_array_equal(gen.labels, a.labels)
    t = seg.run(img, CLASSES, threshold=0.9)  # another threshold, another answer
    assert (t.labels == -1).any() and not (a.labels == -1).any()
    np.testing.assert_array_equal(seg.run(img, CLASSES).labels, a.labels)


def _camera(n: int, period: float, born: dict):
    """A live source: frame i (its index in pixel 0) is captured at t0 + i * period,
    whether or not it is read then; like a camera's driver, the source keeps the frames
    not read yet and hands them out in order."""
    import time

    t0 = time.monotonic()
    for i in range(n):
        born[i] = t0 + i * period
        time.sleep(max(0.0, born[i] - time.monotonic()))
        f = np.zeros((32, 48, 3), np.uint8)
        f[0, 0, :2] = i % 256, i // 256
        yield f


def _latencies(stream, born) -> list[tuple[int, float]]:
    import time

    out = []
    for r in stream:
        i = int(r.image[0, 0, 0]) + 256 * int(r.image[0, 0, 1])
        out.append((i, time.monotonic() - born[i]))
    return out


def test_latest_keeps_latency_bounded_with_a_slow_model(bundles):
    """A model slower than the camera: latest=True answers with the newest frame, never
    older than one period + one inference (+ slack for a loaded CI machine); without
    it, frames queue up and the latency grows with the stream."""
    period, slow, n = 0.01, 0.05, 40
    seg = clips4rt.Segmenter(bundles["maskclip"], threads=1)
    real = seg._embed_one

    def sleepy(*a, **k):
        import time

        time.sleep(slow)
        return real(*a, **k)

    seg._embed_one = sleepy
    born: dict = {}
    fresh = _latencies(seg.stream(_camera(n, period, born), CLASSES, latest=True), born)
    idx = [i for i, _ in fresh]
    assert idx == sorted(set(idx)) and idx[-1] == n - 1  # in order, the last one included
    assert len(idx) < n // 2  # frames were dropped, not queued
    assert max(t for _, t in fresh) < period + slow + 0.1, fresh
    born = {}
    queued = _latencies(seg.stream(_camera(n, period, born), CLASSES), born)
    assert [i for i, _ in queued] == list(range(n))
    assert queued[-1][1] > 10 * (period + slow)  # what latest=True prevents


def test_newest_passes_errors_and_counts_drops():
    import time

    from clips4rt.stream import newest

    def src():
        yield 1
        time.sleep(0.05)
        yield from (2, 3, 4)
        time.sleep(0.05)
        raise OSError("camera unplugged")

    counter: list = []
    got = []
    with pytest.raises(OSError, match="unplugged"):
        for x in newest(src(), counter):
            got.append(x)
            time.sleep(0.02)
    assert got[0] == 1 and got[-1] == 4 and 3 not in got  # 2 and 3 came while busy
    assert counter == [4 - len(got)]
