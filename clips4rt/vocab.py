"""Class vocabularies: a class may have several names (synonyms).

``run(img, ["cat", "dog"])`` asks for one name a class; ``run(img, {"person": ["person",
"man", "woman"], "car": ["car"]})`` for several, as the official SCLIP / ClearCLIP
evaluations name their classes (VOC's background by 26 names, person by 7). Every name
gets its own prototype; a pixel's label is the class of its best name and its score
that name's softmax probability over all names, which is the official rule (softmax
over the names, then the max over each class's names). Labels index the dict's keys.
A class file (``read_classes_file``) has one class a line, its names separated by ``|``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clips4rt.files import read_regular
from clips4rt.prompts import MAX_CLASSES, check_classes

MAX_FILE_BYTES = 1 << 20  # a class file


@dataclass(frozen=True)
class Vocabulary:
    """classes: what labels index; names: the prompts, flat; owner: the class index of
    each name (None when every class is its one name); fitted: the index of the first
    class that comes from a fitted head (``clips4rt.fewshot``; its "names" are
    prototypes, not prompts), None when there is none."""

    classes: list[str]
    names: list[str]
    owner: np.ndarray | None = None
    fitted: int | None = None

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        """Name indices (-1 = background) -> class indices (the same array when every
        class has one name)."""
        if self.owner is None:
            return labels
        lut = np.append(self.owner, np.int32(-1))  # labels -1 index its last entry
        return lut[labels]


def vocabulary(classes) -> Vocabulary:
    """Check ``classes``: a list of names, or a dict {class: [names]} (non-empty lists of
    strings). Raises TypeError/ValueError naming the fix."""
    if not isinstance(classes, dict):
        if isinstance(classes, (set, frozenset)):
            raise TypeError("classes must be ordered (labels index them): a list, not a set")
        names = check_classes(classes)
        return Vocabulary(names, names)
    keys = check_classes(list(classes))
    names: list[str] = []
    owner: list[int] = []
    for i, k in enumerate(keys):
        v = classes[k]
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise TypeError(
                f"classes[{k!r}] must be a list of names, e.g. {{{k!r}: [{k!r}]}}; "
                f"got {type(v).__name__}"
            )
        if not v:
            raise ValueError(f"classes[{k!r}] has no names: give at least one")
        names += list(v)
        owner += [i] * len(v)
        if len(names) > MAX_CLASSES:
            break  # check_classes names the limit
    try:
        names = check_classes(names)
    except ValueError as e:  # a name under two classes could never be told apart
        raise ValueError(f"class names: {e} (a name belongs to one class)") from None
    if names == keys:
        return Vocabulary(keys, names)
    return Vocabulary(keys, names, np.asarray(owner, np.int32))


def read_classes_file(path) -> dict[str, list[str]]:
    """A class file: one class a line, its names separated by ``|`` (the first name is
    the class's), e.g. ``person|man|woman``; blank lines and lines starting with ``#``
    are skipped. UTF-8, at most 1 MiB."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"class file not found: {path}")
    try:  # bounded, and a FIFO or device fails at once instead of blocking
        raw = read_regular(path, MAX_FILE_BYTES, whole=True)
    except OSError as e:
        if e.errno == errno.EFBIG:
            msg = f"{path} is over {MAX_FILE_BYTES} bytes: is it a class file?"
            raise ValueError(msg) from None
        if e.errno == errno.EINVAL:
            raise ValueError(f"{path} is not a regular file: give a text file") from None
        raise
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None
    out: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        names = [x.strip() for x in line.split("|")]
        if not all(names):
            raise ValueError(f"{path}:{n}: an empty name in {line!r} (names are split by '|')")
        if names[0] in out:
            raise ValueError(f"{path}:{n}: class {names[0]!r} is given twice")
        out[names[0]] = names
    if not out:
        raise ValueError(f"{path} names no class: one class a line, e.g. person|man|woman")
    return out
