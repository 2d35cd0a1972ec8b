"""Labelling at dataset scale on Ray Data: ``clips4rt segment SRC --ray [ADDRESS]`` and
:func:`segment_dataset` (the ``ray`` extra: ``pip install "clips4rt[ray]"``).

A Ray Dataset of image paths (or of image bytes) is mapped through a pool of actors,
each holding one :class:`~clips4rt.Segmenter` (``threads`` onnxruntime threads, batches
through ``run_batch``); each row comes back with its label PNG and overlay PNG encoded
as the serial CLI writes them, so ``--ray`` writes byte for byte the files of the
serial ``clips4rt segment``. On a cluster the images must be readable by every worker
(shared storage: NFS, a mounted bucket) and the model reachable from each (a path on
shared storage, an ``https://`` URL, a model name, or the embedded one); the outputs are
written by the driver, where the command runs.
"""

from __future__ import annotations

import io

import numpy as np

from clips4rt.errors import ImageError


def require():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--ray needs Ray Data: pip install 'clips4rt[ray]'") from None
    return ray


def png_bytes(img) -> bytes:
    """``img`` as PNG bytes, encoded exactly as ``clips4rt.visualize.save_image`` saves it."""
    from clips4rt.visualize import png_level

    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=png_level(img))
    return buf.getvalue()


class SegmentActor:
    """One Segmenter per actor; called on a batch of rows (``path`` or ``image`` bytes),
    adds ``labels_png``, ``overlay_png`` and ``error`` (empty when it worked)."""

    def __init__(self, model, classes, options: dict, threads: int | None = 1):
        from clips4rt.segmenter import Segmenter

        self.seg = Segmenter(model, threads=threads)
        self.classes, self.options = classes, options

    def __call__(self, batch: dict) -> dict:
        from clips4rt.images import load_image
        from clips4rt.visualize import label_png

        key = "path" if "path" in batch else "image"
        n = len(batch[key])
        images, ok, errors = [], [], [""] * n
        for i, item in enumerate(batch[key]):
            try:
                source = str(item) if key == "path" else bytes(item)
                images.append(load_image(source, self.seg.max_pixels))
                ok.append(i)
            except (ImageError, FileNotFoundError) as e:
                errors[i] = f"{type(e).__name__}: {e}"
        labels, overlays = [b""] * n, [b""] * n
        for i, r in zip(ok, self.seg.run_batch(images, self.classes, **self.options)):
            labels[i] = png_bytes(label_png(r.labels, len(r.classes)))
            overlays[i] = png_bytes(r.overlay())
        out = dict(batch)
        out["labels_png"] = np.array(labels, dtype=object)
        out["overlay_png"] = np.array(overlays, dtype=object)
        out["error"] = np.array(errors, dtype=object)
        return out


def segment_dataset(dataset, classes, model=None, *, actors: int = 2, threads: int = 1,
                    batch_size: int = 8, **options):  # fmt: skip
    """``dataset`` (a Ray Dataset with a ``path`` column of image files readable by the
    workers, or an ``image`` column of image file bytes) mapped through ``actors``
    Segmenters of ``threads`` threads each, ``batch_size`` rows a call: the same rows
    plus ``labels_png``, ``overlay_png`` (bytes, as the CLI writes them) and ``error``.
    Lazy, like every Ray Dataset: iterate it, or write it with Ray's writers."""
    require()
    return dataset.map_batches(
        SegmentActor,
        fn_constructor_kwargs={
            "model": model,
            "classes": classes,
            "options": options,
            "threads": threads,
        },  # fmt: skip
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=threads,
    )


def init(address: str | None, num_cpus: int | None = None):
    """Connect to the Ray cluster at ``address`` ("auto": the one this machine is part
    of), or start a local one (None)."""
    ray = require()
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order
    ctx.enable_progress_bars = False
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no plan printout per run
    return ray


def results(address, inputs, classes, model, *, actors: int, threads: int, batch_size: int,
            **options):  # fmt: skip
    """What ``clips4rt segment --ray`` writes, per input (``(image, stem)`` pairs), in
    input order: ``(image, stem, labels, (label PNG bytes, overlay PNG bytes), error)``."""
    ray = init(None if address == "local" else address)
    rows = [{"path": str(image), "index": i} for i, (image, _) in enumerate(inputs)]
    ds = segment_dataset(ray.data.from_items(rows), classes, model, actors=actors,
                         threads=threads, batch_size=batch_size, **options)  # fmt: skip
    for row in in_order(ds.iter_rows()):
        image, stem = inputs[int(row["index"])]
        if row["error"]:
            yield image, stem, None, None, row["error"].split(": ", 1)[-1]
            continue
        labels = labels_of_png(row["labels_png"])
        yield image, stem, labels, (bytes(row["labels_png"]), bytes(row["overlay_png"])), ""


def in_order(rows):
    """Rows numbered 0, 1, 2... by their ``index``, yielded in that order whatever order
    they come in (those ahead of their turn wait: COCO ids and the printout then match a
    serial run's)."""
    waiting, turn = {}, 0
    for row in rows:
        waiting[int(row["index"])] = row
        while turn in waiting:
            yield waiting.pop(turn)
            turn += 1
    if waiting:
        raise RuntimeError(f"rows {sorted(waiting)[:5]}... came without row {turn}")


def labels_of_png(data: bytes) -> np.ndarray:
    """The (H, W) int32 labels of a label PNG (255 / 65535 = background -> -1)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    background = 255 if img.mode in ("P", "L") else 65535  # label_png's two forms
    a = np.asarray(img).astype(np.int32)
    return np.where(a == background, -1, a)
