"""The inputs of ``clips4rt segment``: files, folders, quoted globs and http(s) URLs,
each with the output stem its files are written under (never two alike)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from clips4rt.images import IMAGE_SUFFIXES


def expand(items: list[str]) -> list[tuple[Path | str, Path]]:
    """(image path or URL, output stem) for each input: a folder gives its image files
    (all levels below), a quoted glob its matches, an http(s) URL itself. Output stems
    mirror each file's path relative to the inputs' common folder, so a/x.png and
    b/x.png never collide; a URL's stem is its file name."""
    import glob
    from collections import Counter

    from clips4rt.net import is_url

    files: list[Path] = []
    urls: list[str] = []
    for item in items:
        if is_url(item):
            urls.append(item)
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                print(f"skipped {p}: no image files in this folder", file=sys.stderr)
            files += found
        elif not p.exists() and glob.has_magic(item):
            files += sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        else:
            files.append(p)
    files = list(dict.fromkeys(files))
    urls = list(dict.fromkeys(urls))
    parents = [f.resolve().parent for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    sources: list[Path | str] = [*files, *urls]
    names = [f.name for f in files] + [url_name(u) for u in urls]
    stems = [f.resolve().parent.relative_to(root) / f.stem for f in files]
    stems += [Path(Path(n).stem) for n in names[len(files) :]]
    # same folder, same stem (x.png, x.jpg): those keep their suffix (x.png_labels.png)
    seen = Counter(stems)
    clash = {s for s, k in seen.items() if k > 1}
    stems = [s.with_name(n) if s in clash else s for n, s in zip(names, stems)]
    taken: set[Path] = set()
    for i, s in enumerate(stems):  # x.png beside x.png.jpg (stem x.png): a number
        n, t = 2, s
        while t in taken:
            t, n = s.with_name(f"{s.name}~{n}"), n + 1
        taken.add(t)
        stems[i] = t
    return list(zip(sources, stems))


def url_name(url: str) -> str:
    """A safe file name for a URL's image: the last part of its path (or its host)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or "image"
    name = re.sub(r"[^\w.-]", "_", name).lstrip(".") or "image"
    return name[:120]
