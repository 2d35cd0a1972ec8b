"""clips4rt.files.read_regular: the one bounded read of untrusted files."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from clips4rt.files import read_regular


def test_reads_at_most_what_is_asked(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(bytes(range(100)))
    assert read_regular(f, 10) == bytes(range(10))
    assert read_regular(f, 10, offset=95) == bytes(range(95, 100))  # the file ends first
    assert read_regular(f, 100, whole=True) == bytes(range(100))
    with pytest.raises(OSError) as e:
        read_regular(f, 99, whole=True)  # refused before reading
    assert e.value.errno == errno.EFBIG


def test_refuses_what_is_not_a_regular_file_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    errors = []
    t = threading.Thread(target=lambda: errors.append(_err(tmp_path / "fifo")), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():
        with open(tmp_path / "fifo", "wb"):
            pass
        pytest.fail("opening a FIFO blocked")
    assert errors[0].errno == errno.EINVAL
    assert _err(tmp_path).errno in (errno.EINVAL, errno.EISDIR)  # a folder
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert read_regular(tmp_path / "link", 10) == b"secret"
    with pytest.raises(OSError) as e:
        read_regular(tmp_path / "link", 10, follow_symlinks=False)
    assert e.value.errno == errno.ELOOP


def _err(path):
    try:
        read_regular(path, 10)
    except OSError as e:
        return e
    return None
