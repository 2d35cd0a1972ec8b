"""What becomes background (-1): the negative vocabulary, background names, thresholds.

A softmax over the names of a query alone labels every pixel with one of them: asked for
``["car"]`` alone, the whole frame is a car. So a query is contrasted with a *negative
vocabulary* the bundle carries, and pixels won by a negative become -1:

- a CLIP-S4 student's negatives are its known classes (the concepts it was trained to
  tell apart); a training-free CLIP export's are a generic list of stuff and background
  names written by the exporter (``STUFF_NEGATIVES`` unless ``--negatives`` says other);
- a negative is dropped from a query when its prompt embedding is as close as
  ``negative_max_cosine`` (bundle field, default 0.9) to one of the query's names, so a
  query name never competes with itself or a synonym (``"car"`` asked while ``car`` is a
  known class, ``"automobile"`` against ``"car"``); on the toy world the closest two
  distinct classes (moon, fish) are at cosine 0.86, so 0.9 drops only near-copies;
- ``negatives=False`` turns the vocabulary off (the softmax is over the query alone, as
  before); ``background=[...]`` names are added as before, ``background=[]`` removes the
  bundle's ``background_classes`` only.

Thresholds: ``threshold`` is the winner's softmax probability under which a pixel
becomes -1 (over the query's names and the negatives, so with one class it means
something); a dict ``{"car": 0.6, "person": 0.4}`` sets it per class (classes it does
not name keep the bundle's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from clips4rt.prompts import check_classes

#: the negatives a training-free CLIP export carries by default: COCO-Stuff's most
#: frequent stuff classes and generic scene words
STUFF_NEGATIVES: tuple[str, ...] = (
    "sky", "wall", "floor", "ceiling", "ground", "road", "pavement", "grass", "tree", "bush",
    "building", "house", "water", "sea", "river", "sand", "snow", "mountain", "rock", "dirt",
    "field", "table", "window", "door", "fence", "cloth", "paper", "carpet", "light",
    "plant", "wood", "metal", "plastic", "background",
)  # fmt: skip


def negatives(
    names: Sequence[str],
    candidates: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
    max_cosine: float,
) -> list[str]:
    """The ``candidates`` that stay negatives for a query of ``names``: not a query name,
    and with a prompt embedding less similar than ``max_cosine`` to every query name."""
    taken = set(names)
    cand = [c for c in dict.fromkeys(candidates) if c not in taken]
    if not cand:
        return []
    cos = embed(cand) @ embed(list(names)).T  # (negatives, names), unit vectors
    return [c for c, row in zip(cand, cos) if float(row.max()) < max_cosine]


def class_thresholds(threshold, classes: Sequence[str], default: float):
    """(scalar threshold for the kernel, per-class thresholds float32 (K,) or None).

    ``threshold``: None (the bundle's ``default``), a probability, or a dict
    {class: probability} (other classes: ``default``)."""
    if not isinstance(threshold, dict):
        t = default if threshold is None else _probability(threshold, "threshold")
        return t, None
    unknown = [k for k in threshold if k not in classes]
    if unknown:
        raise ValueError(
            f"threshold names {unknown!r}, not classes of this query {list(classes)!r}: give "
            "a threshold for each class you ask for, e.g. {'car': 0.6}"
        )
    per = np.full(len(classes), default, np.float32)
    for k, v in threshold.items():
        per[list(classes).index(k)] = _probability(v, f"threshold[{k!r}]")
    return 0.0, per


def _probability(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)):
        raise ValueError(f"{what} must be a probability in [0, 1], got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what} must be a probability in [0, 1], got {v}")
    return v


def apply_class_thresholds(labels: np.ndarray, probs: np.ndarray, per: np.ndarray) -> None:
    """In place: pixels whose class's threshold is above their probability become -1."""
    won = labels >= 0
    labels[won & (probs < per[np.where(won, labels, 0)])] = -1


def candidates(info, negatives_option) -> list[str]:
    """The negative vocabulary of a call: the bundle's (``negative_classes``, else its
    known classes) when ``negatives_option`` is True, none when False, or the given
    list."""
    if negatives_option is True:
        return list(info.negative_classes or info.known_classes)
    if negatives_option is False or negatives_option is None:
        return []
    if isinstance(negatives_option, (list, tuple)):
        return check_classes(negatives_option) if negatives_option else []
    raise TypeError(
        f"negatives must be True (the bundle's), False (none) or a list of names, got "
        f"{type(negatives_option).__name__}"
    )
