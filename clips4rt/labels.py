"""Label outputs for labelling jobs: class masks as polygons (OpenCV), COCO JSON with RLE
masks (pycocotools), YOLO-seg label files, and supervision ``Detections``.

The libraries are optional (``pip install "clips4rt[labels]"``: pycocotools and
opencv-python-headless; ``pip install supervision`` for ``to_detections``) and imported
only when one of these outputs is asked for: a run that writes label PNGs pays nothing.

Conventions: a label map is (H, W) int, index k = ``classes[k]``, -1 = background.
COCO categories are numbered from 1 (``classes[k]`` -> id k + 1). Polygons are (N, 2)
float arrays of (x, y) pixel coordinates of the boundary pixels' centres, traced by
OpenCV (``cv2.findContours``) and simplified by Douglas-Peucker with ``tolerance``
pixels (``cv2.approxPolyDP``; 0 keeps every boundary pixel); a hole is joined to its
outer ring by a zero-width cut (a "keyhole"), so that one ring per connected part keeps
its holes when filled, as YOLO-seg's single-ring format needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import import_module

import numpy as np

EXTRA = {"cv2": "labels", "pycocotools": "labels", "supervision": None}
PIP = {"cv2": "opencv-python-headless", "pycocotools": "pycocotools", "supervision": "supervision"}


def require(module: str):
    """Import an optional library, or an ImportError naming the pip command."""
    try:
        return import_module(module)
    except ImportError:
        extra = EXTRA[module]
        how = f'pip install "clips4rt[{extra}]"' if extra else f"pip install {PIP[module]}"
        raise ImportError(f"this output needs {PIP[module]}: {how}") from None


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an (H, W) integer array, got {labels.dtype}"
                         f"{list(labels.shape)}")  # fmt: skip
    return labels


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected parts of a bool mask, largest first."""
    cv2 = require("cv2")
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")
    return [comp == i for i in order]


KEYHOLE_CHUNK = 1 << 20  # point pairs compared at once by _keyhole (16 MB of distances)


def _keyhole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` with ``hole`` spliced in at their closest pair of points (the first such
    pair in (outer, hole) order). The pairs are compared a chunk of hole points at a time:
    two rings of 20 k points each (a large ragged part at tolerance 0) would otherwise
    need 6 GB at once."""
    step = max(1, KEYHOLE_CHUNK // max(len(outer), 1))
    best = None
    for s in range(0, len(hole), step):
        d = ((outer[:, None, :] - hole[None, s : s + step, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        cand = (d[i, j], i, s + j)
        best = cand if best is None or cand < best else best
    _, i, j = best
    return np.concatenate([outer[: i + 1], hole[j:], hole[: j + 1], outer[i:]])


KEEP_IOU = 0.9  # polygons(): a simplified part keeps this much of its pixels, or stays exact


def polygons(mask: np.ndarray, tolerance: float = 1.0, keep_iou: float = KEEP_IOU
             ) -> list[np.ndarray]:  # fmt: skip
    """One (N, 2) float64 ring of (x, y) per 8-connected part of ``mask``, its holes
    joined in (see the module docstring), largest part first. A part without area (one
    pixel, a one-pixel line) is a flat ring of at least 3 points through its pixels,
    which fills back to exactly them. A part whose simplified ring would fill back less
    than ``keep_iou`` of its pixels (intersection over union) keeps its exact ring: in a
    part of a few pixels, one pixel of tolerance is most of the part (a two-pixel part
    simplified at 1 px filled back one pixel). ``keep_iou=0``: Douglas-Peucker alone."""
    cv2 = require("cv2")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= 1000):
        raise ValueError(f"tolerance must be a number of pixels in [0, 1000], got {tolerance!r}")
    if not (isinstance(keep_iou, (int, float)) and 0 <= keep_iou <= 1):
        raise ValueError(f"keep_iou must be a number in [0, 1], got {keep_iou!r}")
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {list(m.shape)}")
    contours, hier = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    hier = hier[0]

    def part(i, tol):
        """Contour i's ring at tolerance ``tol``, its holes joined in."""
        poly = _ring(contours[i], tol)
        if len(poly) < 3:  # a pixel, or a line simplified to its ends: there and back
            poly = np.concatenate([poly, poly[::-1]])[: max(3, 2 * len(poly) - 1)]
            poly = np.concatenate([poly, poly[-1:]]) if len(poly) < 3 else poly
        for j in _holes(hier, i):
            hole = _ring(contours[j], tol)
            if len(hole) >= 3:
                poly = _keyhole(poly, hole)
        return poly

    out = []
    for i, c in enumerate(contours):
        if hier[i][3] != -1:  # a hole: joined to its outer ring below
            continue
        area = cv2.contourArea(c)
        poly = part(i, tolerance)
        # the simplified fill differs from the part's pixels only in a band of about
        # tolerance + 1 px along its boundaries: a part whose area is not far larger is checked
        band = 3 * (tolerance + 1) * sum(len(contours[j]) for j in [i, *_holes(hier, i)])
        if tolerance > 0 and keep_iou > 0 and band > (1 - keep_iou) * area:
            x, y, w, h = cv2.boundingRect(c)
            crop = np.ascontiguousarray(m[y : y + h, x : x + w])
            comp = cv2.connectedComponents(crop, connectivity=8)[1]
            b = comp == comp[c[0, 0, 1] - y, c[0, 0, 0] - x]  # its pixels (the exact fill)
            a = rasterize([poly - (x, y)], (h, w))
            if (a & b).sum() < keep_iou * (a | b).sum():
                poly = part(i, 0)
        out.append((area, poly))
    out.sort(key=lambda t: -t[0])
    return [p for _, p in out]


def _holes(hier: np.ndarray, i: int) -> list[int]:
    """The contours of the holes of outer contour i."""
    out, j = [], hier[i][2]  # first hole, then its siblings
    while j != -1:
        out.append(j)
        j = hier[j][0]
    return out


def _ring(c: np.ndarray, tolerance: float) -> np.ndarray:
    """An OpenCV contour as an (N, 2) float64 ring, Douglas-Peucker simplified."""
    cv2 = require("cv2")
    if tolerance > 0:
        c = cv2.approxPolyDP(c, float(tolerance), True)
    return c.reshape(-1, 2).astype(np.float64)


def rasterize(polys: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons (as ``polygons`` gives them) back into a bool (H, W) mask."""
    cv2 = require("cv2")
    out = np.zeros(shape, np.uint8)
    if polys:
        cv2.fillPoly(out, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polys], 1)
    return out.astype(bool)


# ------------------------------------------------------------------ COCO
def _rle(mask: np.ndarray) -> dict:
    mu = require("pycocotools.mask")
    m = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    rle = mu.encode(np.asfortranarray(m))  # no copy for a mask made column-major
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_annotations(labels: np.ndarray, n_classes: int, image_id: int, first_id: int = 1,
                     instances: bool = False) -> list[dict]:  # fmt: skip
    """COCO annotations of one label map: one per class present (``instances``: one per
    8-connected part), the mask as compressed RLE, iscrowd 0 (as COCO-Stuff's)."""
    mu = require("pycocotools.mask")
    # RLE runs down the columns: masks of the transposed labels, transposed back, are
    # column-major already (2x faster at 1080p than a copy per mask)
    flipped = np.ascontiguousarray(_check_labels(labels).T)
    anns = []
    for k in range(n_classes):
        mask = flipped == k
        if not mask.any():
            continue
        for part in components(mask) if instances else [mask]:
            rle = _rle(part.T)
            anns.append({
                "id": first_id + len(anns),
                "image_id": int(image_id),
                "category_id": k + 1,
                "segmentation": rle,
                "area": float(mu.area(rle)),
                "bbox": [float(v) for v in mu.toBbox(rle)],
                "iscrowd": 0,
            })  # fmt: skip
    return anns


def coco_categories(classes: Sequence[str]) -> list[dict]:
    return [{"id": k + 1, "name": c, "supercategory": ""} for k, c in enumerate(classes)]


class CocoWriter:
    """A COCO JSON built image by image: ``add(labels, file_name)``, then ``to_dict()`` or
    ``write(path)`` (atomic: a temporary file renamed)."""

    def __init__(self, classes: Sequence[str], instances: bool = False):
        self.classes, self.instances = list(classes), instances
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, labels: np.ndarray, file_name: str) -> int:
        labels = _check_labels(labels)
        image_id = len(self.images) + 1
        h, w = labels.shape
        self.images.append({"id": image_id, "file_name": str(file_name), "height": int(h),
                            "width": int(w)})  # fmt: skip
        self.annotations += coco_annotations(labels, len(self.classes), image_id,
                                             len(self.annotations) + 1, self.instances)  # fmt: skip
        return image_id

    def to_dict(self) -> dict:
        return {
            "info": {"description": "clips4rt segmentation", "version": "1.0"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": coco_categories(self.classes),
        }

    def write(self, path) -> None:
        from pathlib import Path

        from clips4rt.files import write_atomic

        write_atomic(Path(path).expanduser(), json.dumps(self.to_dict()).encode())


# ------------------------------------------------------------------ YOLO-seg
def yolo_lines(labels: np.ndarray, n_classes: int, tolerance: float = 1.0) -> list[str]:
    """YOLO-seg label lines of one label map: ``k x1 y1 x2 y2 ...`` per connected part of
    class k, coordinates normalised by the image's width and height, 6 decimals."""
    labels = _check_labels(labels)
    h, w = labels.shape
    lines = []
    for k in range(n_classes):
        mask = labels == k
        if not mask.any():
            continue
        for poly in polygons(mask, tolerance):
            xy = np.clip(poly / [w, h], 0.0, 1.0).reshape(-1)
            lines.append(f"{k} " + " ".join(f"{v:.6f}" for v in xy))
    return lines


def yolo_data_yaml(classes: Sequence[str]) -> str:
    """A YOLO ``data.yaml`` naming the classes (each name a JSON string: valid YAML)."""
    names = "\n".join(f"  {k}: {json.dumps(c)}" for k, c in enumerate(classes))
    head = "# written by clips4rt: set train and val to your images"
    return f"{head}\nnc: {len(classes)}\nnames:\n{names}\n"


class DatasetWriter:
    """A folder's labels as a COCO JSON (``coco``: its path) and/or YOLO-seg files
    (``yolo``: a folder; ``labels/<name>.txt``, ``data.yaml``, ``classes.txt``), image by
    image: ``add(labels, name)`` (``name``: the image's path relative to the dataset's
    root, e.g. ``sub/x.jpg``; ``stem``: its YOLO file's, default ``sub/x``), then
    ``close()`` writes the COCO JSON. Paths and libraries
    are checked when it is made, before any image."""

    def __init__(self, classes: Sequence[str], coco=None, yolo=None, instances: bool = False,
                 tolerance: float = 1.0):  # fmt: skip
        from pathlib import Path

        from clips4rt.files import write_atomic

        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance <= 1000):
            raise ValueError(f"tolerance must be pixels in [0, 1000], got {tolerance!r}")
        self.classes, self.tolerance = list(classes), float(tolerance)
        self.coco = self.coco_path = self.yolo = None
        if coco:
            require("pycocotools")
            if instances:
                require("cv2")
            self.coco_path = Path(coco).expanduser()
            if not self.coco_path.parent.is_dir():
                raise FileNotFoundError(f"--coco {coco}: no folder {self.coco_path.parent}")
            self.coco = CocoWriter(self.classes, instances=instances)
        if yolo:
            require("cv2")
            self.yolo = Path(yolo).expanduser()
            (self.yolo / "labels").mkdir(parents=True, exist_ok=True)
            write_atomic(self.yolo / "data.yaml", yolo_data_yaml(self.classes).encode())
            write_atomic(self.yolo / "classes.txt",
                         "".join(f"{c}\n" for c in self.classes).encode())  # fmt: skip

    def add(self, labels: np.ndarray, name, stem=None) -> None:
        from pathlib import Path

        from clips4rt.files import write_atomic

        name = Path(name)
        if self.coco is not None:
            self.coco.add(labels, name.as_posix())
        if self.yolo is not None:
            path = self.yolo / "labels" / f"{name.with_suffix('') if stem is None else stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = yolo_lines(labels, len(self.classes), self.tolerance)
            write_atomic(path, "".join(f"{ln}\n" for ln in lines).encode())

    def close(self) -> None:
        if self.coco is not None:
            self.coco.write(self.coco_path)


# ------------------------------------------------------------------ supervision
def to_detections(labels: np.ndarray, classes: Sequence[str], instances: bool = False,
                  scores: np.ndarray | None = None):  # fmt: skip
    """``supervision.Detections`` of a label map: one detection per class present
    (``instances``: per connected part), with its mask, box, class id, the class name in
    ``data["class_name"]`` and, given ``scores`` (H, W), the mean score as confidence."""
    sv = require("supervision")
    labels = _check_labels(labels)
    masks, ids = [], []
    for k in range(len(classes)):
        mask = labels == k
        if mask.any():
            for part in components(mask) if instances else [mask]:
                masks.append(part)
                ids.append(k)
    h, w = labels.shape
    if not masks:
        return sv.Detections.empty()
    m = np.stack(masks)
    xyxy = np.array([_box(p) for p in m], np.float32)
    conf = None if scores is None else np.array([scores[p].mean() for p in m], np.float32)
    return sv.Detections(xyxy=xyxy, mask=m, class_id=np.array(ids, int), confidence=conf,
                         data={"class_name": np.array([classes[k] for k in ids])})  # fmt: skip


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
