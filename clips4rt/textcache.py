"""On-disk cache of prompt embeddings, so that a restarted app skips the text graph.

One ``.npy`` file per (text graph, templates, class name), named by the sha256 of
all three, under ``cache_dir/<first 16 hex of the text graph's sha256>/``. Writes
are atomic (temporary file + rename); a file that does not load as a finite,
unit-length float32 vector of the bundle's width is ignored and rewritten. Files are
read bounded (the header's shape and type are checked before the data is read, at most
a few KiB) and only when they are regular files (a FIFO never blocks ``run``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from clips4rt.files import read_regular


class TextCache:
    def __init__(self, root, text_sha256: str, dim: int):
        self.dir = Path(root).expanduser() / text_sha256[:16]
        self.text_sha256, self.dim = text_sha256, dim
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cache_dir {root}: cannot create {self.dir} ({e})") from e

    def _path(self, name: str, templates: tuple[str, ...]) -> Path:
        key = json.dumps([self.text_sha256, list(templates), name], ensure_ascii=False)
        return self.dir / (hashlib.sha256(key.encode("utf-8")).hexdigest() + ".npy")

    def get(self, name: str, templates: tuple[str, ...]) -> np.ndarray | None:
        try:
            raw = read_regular(self._path(name, templates), 4096 + 4 * self.dim, whole=True)
        except OSError:
            return None  # missing, too large or not a plain file: recomputed and rewritten
        try:
            f = io.BytesIO(raw)
            major, _ = np.lib.format.read_magic(f)
            read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = read[major](f)
            if shape != (self.dim,) or dtype != np.dtype("<f4"):
                return None  # checked before the data: a header's claim allocates nothing
            v = np.frombuffer(f.read(4 * self.dim), "<f4").astype(np.float32)
        except (KeyError, ValueError, EOFError):
            return None
        ok = (
            v.shape == (self.dim,)
            and np.isfinite(v).all()
            and abs(float(np.linalg.norm(v)) - 1.0) < 1e-3
        )
        return v if ok else None

    def put(self, name: str, templates: tuple[str, ...], value: np.ndarray) -> None:
        path = self._path(name, templates)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".npy")
        except OSError as e:
            warnings.warn(
                f"text cache: cannot write in {self.dir} ({e})", RuntimeWarning, stacklevel=3
            )
            return
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(value, np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as e:  # a full disk must not break segmentation: the cache is optional
            try:
                os.unlink(tmp)
            except OSError:
                pass
            warnings.warn(f"text cache: cannot write {path} ({e})", RuntimeWarning, stacklevel=3)
