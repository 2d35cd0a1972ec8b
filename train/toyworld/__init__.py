"""The toy world: procedural scenes of 6 stuff and 14 thing classes with captions and
exact masks (``world``), a fixed known/unknown split, ``teacher``, the pretraining of its
small open_clip teacher, and ``measure``, the teacher's held-out report. It stands in for
web photos and a real CLIP so that the whole chain (teacher, CLIP-S4 student, export,
evaluation) runs and is tested on a CPU.

    python -m train.toyworld --seed 3000 --count 500 --out data/toy_val   # VOC folder
    python -m train.toyworld.teacher --out train/assets                  # the teacher
"""

from train.toyworld.world import (
    CLASSES,
    IGNORE,
    KNOWN_CLASSES,
    MIN_VISIBLE,
    STUFF,
    THINGS,
    UNKNOWN_CLASSES,
    Scene,
    make_scene,
    write_dataset,
)

__all__ = [
    "CLASSES",
    "IGNORE",
    "KNOWN_CLASSES",
    "MIN_VISIBLE",
    "STUFF",
    "THINGS",
    "UNKNOWN_CLASSES",
    "Scene",
    "make_scene",
    "write_dataset",
]
