"""Hostile training data: shards, patterns and files that used to hang, exhaust memory,
leak files or end in tracebacks (issue 26, items 2, 3, 4, 14, 15)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from train.method import data as D  # noqa: E402
from train.shards import write_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _png(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> list[int]:
    """Write a tar; returns each member's header offset."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return [m.offset for m in tarfile.open(path)]


def _negative_size_shard(path: Path) -> None:
    """Three PNG members; the second header's size is a negative base-256 number that
    points back at the first header (tarfile then reads the same headers forever)."""
    offsets = _tar(path, [(f"{i}.png", _png(i)) for i in range(3)])
    raw = bytearray(path.read_bytes())
    off = offsets[1]
    value = 256**11 - (off + 1024)  # -(off + 1024) in 12-byte base-256
    raw[off + 124 : off + 136] = bytes([0xFF]) + value.to_bytes(11, "big")
    raw[off + 148 : off + 156] = b" " * 8
    raw[off + 148 : off + 156] = b"%06o\0 " % sum(raw[off : off + 512])
    path.write_bytes(bytes(raw))


def _bounded(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a child with 5 GiB of address space (torch maps ~3) and a time
    limit: a regression that loops or allocates without bound fails this test instead
    of eating the machine."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30))

    prelude = (
        "import warnings; warnings.simplefilter('ignore'); from train.method import data as D\n"
    )
    try:
        return subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, timeout=timeout,
                              capture_output=True, text=True, preexec_fn=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {timeout} s: {code}")


def test_a_negative_size_header_ends_the_index_instead_of_looping(tmp_path):
    shard = tmp_path / "bad.tar"
    _negative_size_shard(shard)
    r = _bounded(f"from pathlib import Path; print(len(D.shard_entries(Path({str(shard)!r}))))")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "1"  # the member before the corrupt header
    with pytest.warns(UserWarning, match="corrupt header"):
        assert len(D.catalog(str(tmp_path))) == 1


@pytest.mark.parametrize("pattern", ["shard-{0000..99999999}.tar", "{0..999}{0..999}{0..999}",
                                     "{a,b}{0..9999999999999}",
                                     "{0..99999999999999999999999}"])  # fmt: skip
def test_brace_patterns_are_counted_before_expanding(tmp_path, pattern):
    code = f"""
import tracemalloc
tracemalloc.start()
try:
    D.catalog({str(tmp_path / pattern)!r})
except ValueError as e:
    print(tracemalloc.get_traced_memory()[1], e)
"""
    r = _bounded(code)
    assert r.returncode == 0, r.stderr[-2000:]
    peak, message = r.stdout.split(" ", 1)
    assert "limit of 100000" in message and int(peak) < 5 << 20, r.stdout
    assert D._braces("s{00..02}{a,b}") == ["s00a", "s00b", "s01a", "s01b", "s02a", "s02b"]


def test_oversized_members_are_skipped_by_name_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_MEMBER_BYTES", 20000)
    _tar(tmp_path / "s.tar", [("a.png", _png(0)), ("huge.png", b"\0" * 30000), ("b.png", _png(1))])
    with pytest.warns(UserWarning, match=r"skipping 1 members over .*huge\.png"):
        entries = D.catalog(str(tmp_path))
    assert [e.member for e in entries] == ["a.png", "b.png"]
    forged = D.Entry(str(tmp_path / "s.tar"), 512, 40 << 30, "forged.png")
    with pytest.raises(D.ImageError, match="over"):
        forged.load(32)  # a 40 GB claim is refused before any read


def test_a_shard_swapped_for_a_fifo_never_blocks_the_reader(tmp_path):
    _tar(tmp_path / "s.tar", [("a.png", _png(0))])
    (entry,) = D.catalog(str(tmp_path))
    (tmp_path / "s.tar").unlink()
    os.mkfifo(tmp_path / "s.tar")
    errors = []
    t = threading.Thread(target=lambda: errors.append(_try(entry.load, 32)), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the reader before failing
        with open(tmp_path / "s.tar", "wb"):
            pass
        t.join(5)
        pytest.fail("reading a FIFO blocked")
    assert isinstance(errors[0], D.ImageError) and "not a regular file" in str(errors[0])


def _try(fn, *a):
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def test_no_decodable_image_is_one_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    src = D.StreamSource(str(tmp_path / "d"), 32, 2, 0, 0, 0, 1, workers=1, prefetch=1)
    try:
        with pytest.warns(UserWarning), pytest.raises(ValueError) as e:
            src.next_batch(0)
    finally:
        src.close()
    msg = str(e.value)
    assert "none of the 3 images" in msg and "Traceback" not in msg and "worker" not in msg


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:02d}.png").write_bytes(_png(i))
    return folder


def test_shards_never_follow_links_and_skip_unreadable_files(tmp_path, monkeypatch):
    import train.shards as S

    src = _images(tmp_path / "src", 5)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private bytes")
    (src / "link.png").symlink_to(secret)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.png").write_bytes(_png(9))
    (src / "dirlink").symlink_to(tmp_path / "outside", target_is_directory=True)
    real = S.read_regular

    def unreadable(path, *a, **k):
        if Path(path).name == "02.png":
            raise PermissionError(13, "denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(S, "read_regular", unreadable)
    with pytest.warns(UserWarning) as rec:
        shards = write_shards(src, tmp_path / "out", per_shard=2)
    text = " ".join(str(w.message) for w in rec)
    assert "link.png" in text and "02.png" in text
    blobs = [tarfile.open(s).extractfile(m).read() for s in shards for m in tarfile.open(s)]
    assert len(blobs) == 4 and b"private bytes" not in blobs
    assert _png(9) not in blobs  # the linked folder was not walked
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shard-000000.tar", "shard-000001.tar"]  # fmt: skip


def test_a_failed_shard_run_leaves_nothing_and_can_rerun(tmp_path, monkeypatch):
    src = _images(tmp_path / "src", 7)
    calls = {"n": 0}
    real = tarfile.TarFile.addfile

    def full_disk(self, info, fileobj=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError(28, "No space left on device")
        return real(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_shards(src, tmp_path / "out", per_shard=2)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(tarfile.TarFile, "addfile", real)
    assert len(write_shards(src, tmp_path / "out", per_shard=2)) == 4
