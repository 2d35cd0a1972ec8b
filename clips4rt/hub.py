"""Models by name and by URL: what ``Segmenter(model)`` and ``--model`` accept besides a
bundle's path.

- ``"ViT-B-16/openai"`` (any open_clip model name / pretrained tag): built once, with
  the recommended settings below, into ``<home>/models/ViT-B-16--openai/`` (needs the
  export extra, ``pip install "clips4rt[export]"``, and the weights download once), then
  loaded from there, torch-free, on every later call.
- ``"https://host/path/model.onnx"``: the image graph and the text graph its metadata
  names are downloaded into ``<home>/urls/<hash of the URL>/``; the text graph is checked
  against the sha256 in the metadata, the image graph against ``#sha256=<hex>`` when the
  URL ends with one (pip's pinning syntax). Interrupted downloads resume (HTTP Range) or
  restart; nothing incomplete is ever under a final name; a cached bundle is used
  offline.

``<home>`` is ``$CLIPS4RT_HOME`` or ``~/.cache/clips4rt``. ``clips4rt models`` lists the
names and what is cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from clips4rt.bundle import sha256_file
from clips4rt.errors import BundleError, DownloadError

HOME_ENV = "CLIPS4RT_HOME"
NAME = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")
PIN = re.compile(r"sha256=([0-9a-f]{64})")
MAX_DOWNLOAD = 8 * 2**30  # bytes per file: a ViT-bigG image graph is ~4 GB in float32
CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without a byte before a download is given up (and resumable)


@dataclass(frozen=True)
class Recipe:
    """How a CLIP is exported when asked for by name. The defaults are the settings
    measured best on the toy world (BENCHMARKS.md, "Dense modes as published"): SCLIP
    and ClearCLIP lead MaskCLIP; SCLIP has the better mean over two held-out seeds
    (23.95 vs 23.75 mIoU); windows of the native size at half stride on a 1.5x native
    short side beat one pass at every size in every mode. Weights are stored in float16
    (computed in float32): half the file at a relative error of 3e-4 to 6e-4 (the
    export's parity check, bounded at 5e-3)."""

    dense: str = "sclip"
    window: str | int = "native"
    input_size: int | None = None  # None: 1.5x native with windows
    templates: str = "imagenet"
    fp16_weights: bool = True
    weights_mb: int | None = None  # the open_clip download, for the first-run message


#: names listed by ``clips4rt models``; any other open_clip name/tag works the same way
KNOWN = {
    "ViT-B-16/openai": Recipe(weights_mb=599),
    "ViT-B-32/openai": Recipe(weights_mb=605),
    "ViT-L-14/openai": Recipe(weights_mb=1710),
    "ViT-B-16/laion2b_s34b_b88k": Recipe(weights_mb=599),
    "ViT-L-14/laion2b_s32b_b82k": Recipe(weights_mb=1710),
}


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.cache/clips4rt").expanduser()


def is_url(model) -> bool:
    return isinstance(model, str) and model.lower().startswith(("http://", "https://"))


def is_name(model) -> bool:
    """An open_clip "ARCH/TAG" (a missing ``dir/file.onnx`` is a path, not a name)."""
    return isinstance(model, str) and bool(NAME.fullmatch(model)) and not model.endswith(".onnx")


def resolve(model) -> Path:
    """A bundle's image graph path for a path, a model name or a URL."""
    if is_url(model):
        return fetch(model)
    path = Path(model).expanduser()
    if path.is_file() or not is_name(model):
        if not path.is_file():
            raise FileNotFoundError(
                f"model file not found: {path} (a model is a bundle's .onnx file, a name "
                f"such as ViT-B-16/openai - `clips4rt models` lists them - or an https:// URL)"
            )
        return path
    return named(model)


def cached_dir(name: str) -> Path:
    return home() / "models" / name.replace("/", "--")


def named(name: str) -> Path:
    """The bundle of open_clip ``name`` ("ARCH/TAG"), built on first use."""
    folder = cached_dir(name)
    out = folder / "model.onnx"
    if out.is_file():  # the folder is renamed into place whole: present = complete
        return out
    from clips4rt import export

    try:
        export.require()
    except ImportError as e:
        raise ImportError(f"{name} is not in the cache ({folder}) and {e}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _Lock(folder.parent / f".{folder.name}.lock"):
        if not out.is_file():  # another process may have built it meanwhile
            build(name, folder)
    return out


def build(name: str, folder: Path, recipe: Recipe | None = None) -> None:
    """Export ``name`` with its recipe into ``folder`` (replaced only when complete)."""
    from clips4rt.export.clip_loader import download_weights, load_clip
    from clips4rt.export.graphs import export_dense_clip

    arch, tag = name.split("/", 1)
    recipe = recipe or KNOWN.get(name, Recipe())
    say = lambda s: print(f"clips4rt: {s}", file=sys.stderr, flush=True)  # noqa: E731
    size = f"about {recipe.weights_mb} MB" if recipe.weights_mb else "size unknown"
    say(f"{name} is used for the first time: fetching its open_clip weights ({size}; "
        f"once, into open_clip's cache) and exporting it to {folder}")  # fmt: skip
    t0 = time.monotonic()
    weights = download_weights(arch, tag)
    t1 = time.monotonic()
    say(f"weights: {os.path.getsize(weights) / 1e6:.0f} MB ready in {t1 - t0:.0f} s")
    model, full, mean, std = load_clip(arch, tag)
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.build-"))
    try:
        info, errs = export_dense_clip(
            model, full, tag, mean, std, recipe.dense, stage / "model.onnx",
            input_size=recipe.input_size, templates=recipe.templates,
            fp16_weights=recipe.fp16_weights, window=recipe.window,
        )  # fmt: skip
        if folder.exists():  # builds land whole, so this is not ours: never deleted
            raise FileExistsError(
                f"{folder} exists without model.onnx (not a build of clips4rt's); move it "
                f"away and run again to build {name}"
            )
        os.replace(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    worst = max(errs.values()) if errs else 0.0
    say(f"built {name} ({info.kind}, windows {info.window} px, short side "
        f"{info.input_size}) in {time.monotonic() - t1:.0f} s: {mb:.0f} MB, parity "
        f"error {worst:.1e}")  # fmt: skip


def cached() -> list[tuple[str, Path, int]]:
    """(name or URL folder, image graph, bytes) of every complete cached bundle."""
    rows = []
    for kind in ("models", "urls"):
        root = home() / kind
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = [p for p in d.glob("*.onnx") if not p.name.endswith(".text.onnx")]
            if len(images) == 1:  # the image graph is renamed into place last
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                name = d.name.replace("--", "/", 1) if kind == "models" else _origin(d)
                rows.append((name, images[0], size))
    return rows


# ----------------------------------------------------------------------------- URLs
def fetch(url: str) -> Path:
    """Download a bundle from ``url`` into the cache (or find it there)."""
    base, frag = urldefrag(url)
    pin = None
    if frag:
        m = PIN.fullmatch(frag.lower())
        if not m:
            raise ValueError(f"URL fragment #{frag} is not #sha256=<64 hex digits>")
        pin = m.group(1)
    fname = Path(urlsplit(base).path).name
    if not re.fullmatch(r"[\w.+-]+\.onnx", fname):
        raise ValueError(f"{url}: the URL must end with the image graph's file name (*.onnx)")
    folder = home() / "urls" / hashlib.sha256(base.encode()).hexdigest()[:16]
    image = folder / fname
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "origin.txt").is_file():
        (folder / "origin.txt").write_text(base + "\n")
    with _Lock(folder / ".lock"):
        if image.is_file() and (pin is None or sha256_file(image) == pin):
            return image
        _download(base, folder / f".{fname}.part")
        got = None if pin is None else sha256_file(folder / f".{fname}.part")  # only if pinned
        if pin is not None and got != pin:
            (folder / f".{fname}.part").unlink()
            raise BundleError(
                f"{base}: sha256 {got} is not the pinned {pin}; the download was removed"
            )
        info = _metadata(folder / f".{fname}.part", base)
        text = folder / info.text_model
        if not (text.is_file() and sha256_file(text) == info.text_model_sha256):
            part = folder / f".{info.text_model}.part"
            _download(urljoin(base, info.text_model), part)
            if sha256_file(part) != info.text_model_sha256:
                part.unlink()
                raise BundleError(
                    f"{urljoin(base, info.text_model)}: sha256 does not match the one in "
                    f"{fname}'s metadata ({info.text_model_sha256[:16]}...); the download was "
                    "removed"
                )
            os.replace(part, text)
        os.replace(folder / f".{fname}.part", image)  # the image graph last: complete
    return image


def _origin(folder: Path) -> str:
    try:
        return (folder / "origin.txt").read_text()[:2000].strip() or folder.name
    except OSError:
        return folder.name


def _metadata(path: Path, source: str):
    import onnxruntime as ort

    from clips4rt import bundle as B

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        path.unlink()
        raise BundleError(f"{source}: not an ONNX model ({str(e)[:200]}); removed") from None
    try:
        return B.BundleInfo.from_metadata(sess.get_modelmeta().custom_metadata_map, source)
    except BundleError:
        path.unlink()
        raise


def _download(url: str, part: Path) -> None:
    """Fetch ``url`` into ``part``, resuming what an earlier attempt left there."""
    import http.client
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "clips4rt"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    t0 = time.monotonic()
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch past what we have: start over
            part.unlink()
            return _download(url, part)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError) as e:
        raise DownloadError(f"{url}: cannot download ({getattr(e, 'reason', e)}); a bundle "
                      "already in the cache works offline") from None  # fmt: skip
    with resp:
        resumed = have and resp.status == 206 and _range_start(resp) == have
        total = resp.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total and total.isdigit() else None
        if total is not None and total > MAX_DOWNLOAD:
            raise BundleError(f"{url}: {total} bytes is over the {MAX_DOWNLOAD} byte limit")
        done = have if resumed else 0
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # timeout, reset, cut
                    raise DownloadError(f"{url}: interrupted at {done} bytes ({e!r:.100}); "
                                        "run again to resume") from None  # fmt: skip
                if not chunk:
                    break
                done += len(chunk)
                if done > MAX_DOWNLOAD:
                    part.unlink()
                    raise BundleError(f"{url}: more than the {MAX_DOWNLOAD} byte limit")
                f.write(chunk)
    if total is not None and done != total:
        raise DownloadError(f"{url}: the connection closed at {done} of {total} bytes; run again "
                      "to resume")  # fmt: skip
    print(f"clips4rt: downloaded {url} ({done / 1e6:.1f} MB{', resumed' if resumed else ''}) "
          f"in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)  # fmt: skip


def _range_start(resp) -> int | None:
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


class _Lock:
    """An exclusive lock file (flock where the OS has it), so two processes building or
    downloading the same model take turns instead of writing the same files."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock, the renames still keep files whole
            pass
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
