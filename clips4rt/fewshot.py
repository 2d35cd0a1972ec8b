"""Few-shot transfer at run time: a light head fitted on the frozen pixel embeddings.

    head = clips4rt.fit_head(seg, images, masks, ["conveyor", "crate", "forklift"])
    head.save("factory.head.npz")
    seg.run(frame, ["person"], head=clips4rt.Head.load("factory.head.npz"))

The method (numpy only, no torch):

1. each labelled image goes through ``Segmenter.embed_image`` (the working size and
   windows ``run`` uses), one unit vector per grid cell; its mask is read at a 4 x 4
   grid of points inside each cell, and a cell takes the majority label when at least
   half of its points carry it (else it is left out: boundaries and ignore pixels);
   per class at most ``max_samples`` cells (a seeded random pick);
2. the start: ``init="text"`` (default) one prototype a class, its name's text
   prototype, i.e. the zero-shot classifier ``run`` would use; ``init="imprint"`` (for
   names the text model cannot know) up to ``prototypes`` a class, the unit means of a
   spherical k-means of its cells (one per 64 cells);
3. refinement as a cosine classifier: logits = the bundle's logit scale x the cosine
   to every prototype; a class's probability is the sum over its prototypes of their
   softmax (as ``run`` scores a class with several names); the loss is the mean
   cross-entropy over the cells plus ``l2`` x the squared distance of the prototypes
   to their start (the regularisation: a few shots may not pull them far); Adam,
   ``steps`` steps, rows renormalised to unit length after each. ``l2="auto"``
   (default) picks the pull by 3-fold cross-validation over the images: 0.01, 0.1, 1,
   10 or no refinement at all, whichever gives the held-out cells the best mean IoU -
   with few images the start (for ``init="text"``: language mode) often wins.

The head's prototypes live in the same space and units as the text prototypes, so a
call can mix them: ``run(image, ["person"], head=head)`` labels ``["person"] +
head.classes``; the bundle's background names and negatives apply as usual. A fitted
class has no absolute score (``SegmentationResult.probability``): the bundle's score
calibration is fitted on text prototypes.

The file (``Head.save``/``Head.load``) is an uncompressed ``.npz`` with four plain arrays
(prototypes float32, owner int32, classes unicode, meta a JSON string) and no pickle;
``Head.load`` bounds the file (``MAX_FILE_BYTES``) and every member before reading it,
parses the arrays itself (no ``np.load``) and checks shapes, values and classes.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clips4rt.discover import _unit, kmeans
from clips4rt.prompts import check_classes

FORMAT = "clips4rt-head"
VERSION = 1
MAX_FILE_BYTES = 256 << 20  # a head file
MAX_PROTOTYPES = 65536  # rows of a head
MAX_DIM = 1 << 16
IGNORE = 255  # the mask value that is no class (VOC's boundary label); -1 works too
CELLS_PER_PROTOTYPE = 64  # a class gets a prototype per this many cells (at most prototypes)
SUB = 4  # points per cell side a mask is read at
L2_CANDIDATES = (0.01, 0.1, 1.0, 10.0, math.inf)  # l2="auto" picks one (inf = no refinement)
L2_STOP = 1e6  # "inf" chosen: a pull that keeps the start
L2_FALLBACK = 1.0  # l2="auto" with one image (no cross-validation possible)
FOLDS = 3
MEMBERS = {"prototypes.npy", "owner.npy", "classes.npy", "meta.npy"}


class Head:
    """A fitted head: ``classes`` (what its labels name), ``prototypes`` (P, D) unit
    float32 rows, ``owner`` (P,) the class index of each row, ``meta`` (method, shots,
    the model it was fitted on)."""

    def __init__(self, classes, prototypes, owner, meta=None):
        self.classes = check_classes(list(classes))
        p = np.asarray(prototypes)
        o = np.asarray(owner)
        if p.ndim != 2 or not 1 <= p.shape[0] <= MAX_PROTOTYPES or not 1 <= p.shape[1] <= MAX_DIM:
            raise ValueError(f"head prototypes must be (P, D) with 1 <= P <= {MAX_PROTOTYPES}, "
                             f"got shape {p.shape}")  # fmt: skip
        if p.dtype.kind != "f" or not np.isfinite(p).all():
            raise ValueError("head prototypes must be finite floats")
        norms = np.linalg.norm(p.astype(np.float64), axis=1)
        if (norms < 1e-6).any():
            raise ValueError("a head prototype has zero length")
        if o.shape != (p.shape[0],) or o.dtype.kind not in "iu":
            raise ValueError(f"head owner must be ({p.shape[0]},) integers, got {o.dtype} "
                             f"{o.shape}")  # fmt: skip
        k = len(self.classes)
        if o.min() < 0 or o.max() >= k:
            raise ValueError(f"head owner indexes classes 0..{k - 1}, found {o.min()}..{o.max()}")
        missing = sorted(set(range(k)) - set(o.tolist()))
        if missing:
            raise ValueError(f"head class {self.classes[missing[0]]!r} has no prototype")
        if np.abs(norms - 1).max() > 1e-5:  # unit rows stay bit for bit (a file round trip)
            p = p / norms[:, None]
        self.prototypes = np.ascontiguousarray(p, dtype=np.float32)
        self.owner = o.astype(np.int32)
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    def __repr__(self) -> str:
        return f"Head({len(self.classes)} classes, {len(self.prototypes)} prototypes, D={self.dim})"

    # ------------------------------------------------------------------ file
    def save(self, path) -> Path:
        """Write the head as ``.npz`` (no pickle), atomically; returns the path."""
        from clips4rt.files import write_atomic

        path = Path(path).expanduser()
        buf = io.BytesIO()
        meta = {"format": FORMAT, "version": VERSION, **self.meta}
        np.savez(buf, prototypes=self.prototypes, owner=self.owner,
                 classes=np.array(self.classes, dtype=str),
                 meta=np.array(json.dumps(meta, sort_keys=True)))  # fmt: skip
        write_atomic(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> Head:
        """Read a head written by ``save``; a file that is not one raises ValueError
        (FileNotFoundError when missing), before allocating more than it bounds."""
        from clips4rt.files import read_regular

        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"head file not found: {path}")
        try:
            raw = read_regular(path, MAX_FILE_BYTES, whole=True)
        except OSError as e:
            if e.errno in (errno.EFBIG, errno.EINVAL):  # too large; not a regular file
                raise ValueError(f"{path}: not a head file ({e.strerror}); write one with "
                                 "Head.save or clips4rt fit-head") from None  # fmt: skip
            raise
        try:
            arrays = _read_npz(raw)
            meta = json.loads(str(arrays["meta"][()])) if arrays["meta"].ndim == 0 else None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("its meta is not a clips4rt head's")
            if meta.get("version") != VERSION:
                raise ValueError(f"format version {meta.get('version')!r}, this clips4rt "
                                 f"reads {VERSION}: upgrade clips4rt or fit the head again")
            classes = arrays["classes"]
            if classes.ndim != 1 or classes.dtype.kind != "U":
                raise ValueError("its classes are not a list of names")
            return cls([str(c) for c in classes], arrays["prototypes"], arrays["owner"], meta)
        except (ValueError, TypeError, KeyError, zipfile.BadZipFile, json.JSONDecodeError,
                UnicodeDecodeError) as e:  # fmt: skip
            raise ValueError(f"{path} is not a valid clips4rt head: {e}") from None


def _read_npz(raw: bytes) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed or deflated ``.npz``, each member bounded by its
    declared size and parsed here (plain dtypes only; no pickle, no object arrays)."""
    zf = zipfile.ZipFile(io.BytesIO(raw))
    infos = zf.infolist()
    names = {i.filename for i in infos}
    if names != MEMBERS or len(infos) != len(MEMBERS):
        raise ValueError(f"members {sorted(names)[:8]}, expected {sorted(MEMBERS)}")
    out = {}
    for info in infos:
        if info.file_size > MAX_FILE_BYTES:
            raise ValueError(f"{info.filename} unpacks to {info.file_size} bytes")
        with zf.open(info) as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{info.filename} unpacks to over {MAX_FILE_BYTES} bytes")
        out[info.filename[:-4]] = _parse_npy(data, info.filename)
    return out


def _parse_npy(data: bytes, name: str) -> np.ndarray:
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
    if read is None:
        raise ValueError(f"{name}: .npy version {version}")
    shape, fortran, dtype = read(f, max_header_size=10000)
    if dtype.hasobject or dtype.kind not in "fiuU" or dtype.fields is not None:
        raise ValueError(f"{name}: dtype {dtype} is not a plain number or text")
    if len(shape) > 2 or any(n < 0 for n in shape):
        raise ValueError(f"{name}: shape {shape}")
    count = math.prod(shape)
    body = data[f.tell() :]
    if count * dtype.itemsize != len(body):
        raise ValueError(f"{name}: shape {shape} of {dtype} needs {count * dtype.itemsize} "
                         f"bytes, the member has {len(body)}")  # fmt: skip
    a = np.frombuffer(body, dtype=dtype, count=count)
    return a.reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------------- masks
def load_mask(mask, name: str = "mask") -> np.ndarray:
    """A mask as (H, W) int64 labels: an integer array, or a lossless image file (PNG,
    BMP, TIFF, PPM/PGM: palette index or gray value = label), bounded like images."""
    if isinstance(mask, (str, os.PathLike)):
        from PIL import Image

        from clips4rt.images import MAX_PIXELS, _check_pixels

        path = Path(mask).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        with Image.open(path, formats=("PNG", "BMP", "TIFF", "PPM")) as img:
            _check_pixels(*img.size, str(path), MAX_PIXELS)
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                raise ValueError(f"{path}: mask mode {img.mode}; save masks as 8-bit gray or "
                                 "palette PNGs whose values are class indices")  # fmt: skip
            a = np.asarray(img)
        return a.astype(np.int64)
    a = np.asarray(mask)
    if a.dtype == bool:
        raise ValueError(f"{name} is boolean; give class indices (0..K-1, {IGNORE} = ignore)")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be (H, W), got shape {a.shape}")
    return a.astype(np.int64)


def cell_labels(mask: np.ndarray, h: int, w: int, k: int) -> np.ndarray:
    """(h, w) labels of a grid over ``mask``: the majority of SUB x SUB points inside
    each cell when at least half carry it, else -1 (boundary, ignore)."""
    H, W = mask.shape
    ys = ((np.arange(h * SUB) + 0.5) * H / (h * SUB)).astype(np.int64)
    xs = ((np.arange(w * SUB) + 0.5) * W / (w * SUB)).astype(np.int64)
    sub = mask[ys][:, xs].reshape(h, SUB, w, SUB)
    best = np.full((h, w), -1, np.int64)
    best_n = np.zeros((h, w), np.int64)
    for c in np.unique(sub):
        if not 0 <= c < k:
            continue
        n = (sub == c).sum(axis=(1, 3))
        better = n > best_n
        best[better], best_n[better] = c, n[better]
    best[best_n * 2 < SUB * SUB] = -1
    return best


# ---------------------------------------------------------------------- fitting
def fit_head(
    segmenter,
    images: Sequence,
    masks: Sequence,
    classes: Sequence[str],
    *,
    init: str = "text",
    prototypes: int = 4,
    steps: int = 100,
    lr: float = 0.003,
    l2="auto",
    max_samples: int = 4096,
    seed: int = 0,
    templates=None,
    size: int | None = None,
    window="default",
    window_stride=None,
) -> Head:
    """Fit a head on labelled images (the method: this module's docstring).

    Args:
        segmenter: the ``Segmenter`` whose embeddings the head reads (use it with the
            same model).
        images: paths, PIL images or HxWx3 uint8 arrays.
        masks: one per image, the same height and width: class indices into
            ``classes`` (``IGNORE`` = 255 or -1 for unlabelled pixels), as integer arrays
            or lossless image files (palette or gray PNG).
        classes: the names the indices stand for; each needs labelled cells in some mask.
        init: "text" (default): a prototype a class, starting at its name's text
            prototype (``templates``; the zero-shot classifier), refined on the cells;
            "imprint": up to ``prototypes`` a class from k-means of its cells, for
            classes whose names mean nothing to the text model (codes, part numbers).
        prototypes: "imprint": at most this many a class (one per 64 cells).
        steps, lr, l2: the refinement (0 steps = the start alone); ``l2`` pulls the
            prototypes back to their start: "auto" (default) chooses it by 3-fold
            cross-validation over the images among 0.01, 0.1, 1, 10 and no refinement
            (the best mean IoU of the held-out cells; 1.0 with one image).
        max_samples: grid cells kept a class (a seeded random pick).
        size, window, window_stride: as in ``run`` (default: the bundle's).
    """
    from clips4rt.images import load_image

    classes = check_classes(list(classes))
    k = len(classes)
    if init not in ("text", "imprint"):
        raise ValueError(f"init must be 'text' or 'imprint', got {init!r}")
    if isinstance(images, (str, os.PathLike)) or isinstance(masks, (str, os.PathLike)):
        raise TypeError("images and masks are lists (one mask per image)")
    images, masks = list(images), list(masks)
    if not images or len(images) != len(masks):
        raise ValueError(f"give one mask per image: {len(images)} images, {len(masks)} masks")
    for name, v, lo in (("prototypes", prototypes, 1), ("steps", steps, 0),
                        ("max_samples", max_samples, 1)):  # fmt: skip
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    for name, v in (("lr", lr), ("l2", 0.0 if l2 == "auto" else l2)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    per_class: list[list[np.ndarray]] = [[] for _ in range(k)]
    for i, (image, mask) in enumerate(zip(images, masks)):
        image = load_image(image, segmenter.max_pixels)
        m = load_mask(mask, f"masks[{i}]")
        if m.shape != image.shape[:2]:
            raise ValueError(f"masks[{i}] is {m.shape[1]}x{m.shape[0]}, its image "
                             f"{image.shape[1]}x{image.shape[0]}: a mask covers its image "
                             "pixel for pixel")  # fmt: skip
        bad = (m != IGNORE) & (m != -1) & ((m < 0) | (m >= k))
        if bad.any():
            vals = np.unique(m[bad])[:5].tolist()
            raise ValueError(f"masks[{i}] has labels {vals} outside 0..{k - 1} (the "
                             f"{k} classes; {IGNORE} or -1 = ignore)")  # fmt: skip
        emb = segmenter.embed_image(image, size, window, window_stride)
        d, h, w = emb.shape
        cells = cell_labels(m, h, w, k).reshape(-1)
        x = _unit(emb.reshape(d, -1).T.astype(np.float32))
        for c in np.unique(cells[cells >= 0]):
            per_class[c].append((x[cells == c], np.full(int((cells == c).sum()), i)))
    empty = [classes[c] for c in range(k) if not per_class[c]]
    if empty:
        raise ValueError(f"no labelled cells of {empty[:5]} in the masks (a class needs pixels "
                         "covering at least half a grid cell): label some, drop the class, or "
                         "ask for it by name (run(image, [name], head=...))")  # fmt: skip
    rng = np.random.default_rng(seed)
    xs, ys, src, protos, owner, counts = [], [], [], [], [], []
    for c in range(k):
        x = np.concatenate([a for a, _ in per_class[c]])
        g = np.concatenate([b for _, b in per_class[c]])
        counts.append(len(x))
        if len(x) > max_samples:
            pick = rng.choice(len(x), max_samples, replace=False)
            x, g = x[pick], g[pick]
        xs.append(x)
        ys.append(np.full(len(x), c))
        src.append(g)
        if init == "imprint":
            m = max(1, min(prototypes, len(x) // CELLS_PER_PROTOTYPE))
            ids = kmeans(x, m, seed) if m > 1 else np.zeros(len(x), np.int64)
            for j in range(m):
                if (ids == j).any():
                    protos.append(_unit(x[ids == j].sum(0)))
                    owner.append(c)
    if init == "text":
        protos = list(_unit(segmenter.text_embeddings(classes, templates)))
        owner = list(range(k))
    w0 = np.stack(protos).astype(np.float32)
    owner = np.asarray(owner, np.int32)
    scale = float(segmenter.info.logit_scale)
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(src)
    scores = None
    if l2 == "auto":
        l2, scores = _choose_l2(x, y, g, w0, owner, k, scale, steps, lr)
    w = _refine(x, y, w0, owner, k, scale, steps, lr, l2)
    meta = {
        "method": f"cosine prototypes, {init} start, refined",
        "init": init, "prototypes_per_class": prototypes if init == "imprint" else 1,
        "steps": steps, "lr": lr, "l2": l2, "seed": seed, "l2_scores": scores,
        "images": len(images),
        "cells": dict(zip(classes, counts)),
        "dim": int(w.shape[1]),
        "logit_scale": scale,
        "size": size, "window": None if isinstance(window, str) else window,
        "model_sha256": segmenter.image_sha256(),
    }  # fmt: skip
    return Head(classes, w.astype(np.float32), owner, meta)


def _choose_l2(x, y, g, w0, owner, k, scale, steps, lr):
    """``l2="auto"``: the candidate (``L2_CANDIDATES``; inf = the start unrefined) with
    the best mean IoU over held-out cells, in ``FOLDS``-fold cross-validation by image;
    ties to the stronger pull. Returns (l2, {candidate: score})."""
    images = np.unique(g)
    if len(images) < 2 or steps == 0:
        return L2_FALLBACK, None
    folds = min(FOLDS, len(images))
    fold_of = {im: j % folds for j, im in enumerate(images)}
    fold = np.array([fold_of[i] for i in g])
    scores = {}
    for cand in L2_CANDIDATES:
        conf = np.zeros((k, k), np.int64)
        for f in range(folds):
            tr, te = fold != f, fold == f
            if not te.any():
                continue
            w = w0 if math.isinf(cand) else _refine(x[tr], y[tr], w0, owner, k, scale, steps,
                                                    lr, cand)  # fmt: skip
            pred = owner[np.argmax(x[te] @ w.T, 1)]
            np.add.at(conf, (y[te], pred), 1)
        tp = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - tp
        scores[cand] = float(np.mean(tp[union > 0] / union[union > 0]))
    best = max(scores.values())
    l2 = max(c for c, v in scores.items() if v >= best - 1e-9)  # ties: the stronger pull
    return (L2_STOP if math.isinf(l2) else l2), {str(c): round(v, 4) for c, v in scores.items()}


def _refine(x, y, w0, owner, k, scale, steps, lr, l2) -> np.ndarray:
    """Adam on the cross-entropy of the cosine classifier (a class's probability = the
    sum of its prototypes' softmax; every cell weighs the same) + l2 * |W - W0|^2,
    rows renormalised to unit length after each step."""
    if steps == 0:
        return w0
    member = owner[None, :] == y[:, None]  # (N, P): prototype p belongs to the cell's class
    w = w0.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    b1, b2 = 0.9, 0.999
    for t in range(1, steps + 1):
        z = scale * (x @ w.T)  # (N, P)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        q = np.where(member, p, 0.0)
        q /= np.maximum(q.sum(1, keepdims=True), 1e-30)  # softmax within the class
        grad = scale * ((p - q).T @ x) / len(x) + 2 * l2 * (w - w0)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w = _unit(w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8))
    return w


def check_head(head, segmenter) -> Head:
    """``head`` for ``segmenter``: a Head or a path to one; its width must be the
    model's, and a head fitted on another image graph is warned about."""
    if isinstance(head, (str, os.PathLike)):
        head = Head.load(head)
    if not isinstance(head, Head):
        raise TypeError(f"head must be a clips4rt.Head or a path to one, got {type(head).__name__}")
    if head.dim != segmenter.info.embed_dim:
        raise ValueError(f"the head has {head.dim}-d prototypes, this model's embeddings are "
                         f"{segmenter.info.embed_dim}-d: fit the head with this model")  # fmt: skip
    sha = head.meta.get("model_sha256")
    if sha and sha != segmenter.image_sha256():
        warnings.warn("the head was fitted on another image graph (sha256 "
                      f"{str(sha)[:12]}..., this one {segmenter.image_sha256()[:12]}...): "
                      "its prototypes may not fit this model's embeddings; fit it again "
                      "with this model", stacklevel=3)  # fmt: skip
    return head


# ---------------------------------------------------------------------- use in run
MAX_NAMES = 10_000  # text names + head prototypes of one call (as prompts.MAX_CLASSES)


def head_key(head):
    """The memo key of a ``head`` option (``Segmenter``'s last-prompts memo): the Head
    itself (by identity), a path with its size and time (a rewritten file is read
    again), Ellipsis otherwise (no memo)."""
    if head is None or not isinstance(head, (str, os.PathLike)):
        return head if head is None or isinstance(head, Head) else Ellipsis
    try:
        st = Path(head).expanduser().stat()
    except OSError:
        return Ellipsis
    return (str(head), st.st_size, st.st_mtime_ns)


def asked_names(vocab) -> list[str]:
    """The names a call asks for: its text names, and a fitted head's class names (what
    the background names and negatives must not repeat)."""
    if vocab.fitted is None:
        return vocab.names
    n = len(vocab.names) - int((vocab.owner >= vocab.fitted).sum())
    return vocab.names[:n] + vocab.classes[vocab.fitted :]


def with_head(segmenter, classes, head):
    """(The vocabulary of text ``classes`` (None or [] = none) followed by the head's
    classes, whose "names" are its prototypes; the checked Head)."""
    from clips4rt.vocab import Vocabulary, vocabulary

    head = check_head(head, segmenter)
    if classes is None or (isinstance(classes, (list, tuple)) and not len(classes)):
        text = Vocabulary([], [])
    else:
        text = vocabulary(classes)
    both = set(text.classes) & set(head.classes)
    if both:
        raise ValueError(f"{sorted(both)[:3]} asked both by name and from the head: a class "
                         "comes from one of them; drop it from the classes")  # fmt: skip
    if len(text.names) + len(head.prototypes) > MAX_NAMES:
        raise ValueError(f"{len(text.names)} names + {len(head.prototypes)} head prototypes: "
                         f"over {MAX_NAMES} in one call")  # fmt: skip
    n = len(text.classes)
    owner = text.owner if text.owner is not None else np.arange(n, dtype=np.int32)
    names = text.names + [f"{head.classes[o]} #{i}" for i, o in enumerate(head.owner)]
    owner = np.concatenate([owner, head.owner + n]).astype(np.int32)
    return Vocabulary(text.classes + head.classes, names, owner, fitted=n), head
