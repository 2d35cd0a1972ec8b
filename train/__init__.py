"""The training side of clips4rt: CLIP-S4 on unlabeled images with an open_clip teacher,
export to the runtime's ONNX bundle, evaluation, and the toy world that tests it all
on a CPU. It runs from a checkout (the wheel ships the runtime ``clips4rt`` and its
export, ``clips4rt.export``: open_clip loading, the teacher's training-free dense modes,
the CLIP-S4 students, which this package imports from there).

Sub-packages, each importing only those listed before it (and ``clips4rt``/``kernels``):

- ``train.toyworld``: the procedural toy world (scenes, captions, masks, the split)
  and the pretraining of its small CLIP teacher.
- ``train.evaluate``: VOC-style folders, mIoU of any bundle on them, and validation of
  a student in torch during training.
- ``train.method``: CLIP-S4 itself: config and presets, data sources, augmentation,
  segments, prototypes, losses, the training loop (``python -m train``).
- ``train.export``: ``clips4rt.export`` with the checkout's paths, the embedded default
  bundle, score calibration, the on-device match graph.

Shared by all of them: ``train.checkpoint`` (weights-only checkpoint files),
``train.schedule`` (the learning-rate schedule), ``train.kmeans`` (spherical k-means).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the training package's folder; its data files are found from here, never from the
#: working directory
ROOT = Path(str(resources.files(__name__)))
ASSETS = ROOT / "assets"  # the committed toy teacher (python -m train.toyworld.teacher)
CONFIGS = ROOT / "configs"  # open_clip model configs of the toy teacher and the tests
CHECKOUT = ROOT.parent  # the repository checkout this package runs from


def resolve_path(path: str | None) -> str | None:
    """A config's file path as given when it exists from the working directory (or is
    absolute), else relative to the checkout (``train/assets/toy-teacher.pt`` works from
    any directory); unchanged when neither exists, so the error names what was given."""
    if path is None:
        return path
    if path.startswith("~"):
        path = str(Path(path).expanduser())
    if Path(path).is_absolute() or Path(path).exists():
        return path
    inside = CHECKOUT / path
    return str(inside) if inside.exists() else path
