"""One call's question, checked: class names (or a vocabulary, or a fitted head), the
background threshold and classes, negatives, templates, size, windows and the logit
scale (``Segmenter.run``'s options), resolved into the prototypes the kernels match
against. Checked before any image is read; the last answer is remembered, as a video
asks the same question every frame."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from clips4rt import background as BG
from clips4rt import fewshot as FS
from clips4rt.prompts import check_classes
from clips4rt.vocab import Vocabulary, vocabulary


def _memo_key(v):
    """A hashable copy of None, a list/tuple of strings or a dict of those, else
    Ellipsis (no memo)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(v)
    if isinstance(v, dict):
        items = tuple((k, _memo_key(x)) for k, x in v.items())
        if all(isinstance(k, str) and isinstance(x, tuple) for k, x in items):
            return ("dict", items)
    return Ellipsis


class Query(NamedTuple):
    """One call's checked options: the vocabulary, the background threshold, the
    prototypes (names, then background names), and the image-side settings."""

    vocab: Vocabulary
    threshold: float  # the kernel's (0 when per-class thresholds apply)
    class_thresholds: np.ndarray | None  # (K,) per class of vocab.classes, or None
    protos: np.ndarray
    size: int | None
    window: tuple[int, int] | None  # (window, stride) pixels, None = whole image
    logit_scale: float


def build(
    seg,
    classes,
    threshold=None,
    background=None,
    templates=None,
    size=None,
    window="default",
    window_stride=None,
    logit_scale=None,
    negatives=True,
    head=None,
) -> Query:
    """Every option of a call (``Segmenter.run``'s), checked before any image is read."""
    if size is not None:
        seg.working_size(seg.info.stride, seg.info.stride, size)  # checks size
    win = seg.window_setting(window, window_stride)
    if logit_scale is None:
        logit_scale = seg.info.logit_scale
    elif not (
        isinstance(logit_scale, (int, float, np.floating))
        and not isinstance(logit_scale, bool)
        and math.isfinite(logit_scale)
        and 0 < logit_scale <= 1e4
    ):
        raise ValueError(
            f"logit_scale must be a finite number in (0, 10000], got {logit_scale!r} "
            f"(None = the bundle's {seg.info.logit_scale:g})"
        )
    prompts = remembered(seg, classes, threshold, background, templates, negatives, head)
    return Query(*prompts, size, win, float(logit_scale))


def remembered(seg, classes, threshold=None, background=None, templates=None, negatives=True,
               head=None):  # fmt: skip
    """Checked (vocabulary, threshold, per-class thresholds, prototypes incl. background
    names and negatives). The last answer is kept: a video asks the same question
    every frame."""
    key = (
        _memo_key(classes),
        threshold if isinstance(threshold, (int, float)) else None,
        _memo_key(background),
        _memo_key(templates),
        negatives if isinstance(negatives, bool) else _memo_key(negatives),
        FS.head_key(head),
    )
    if threshold is not None and key[1] is None or Ellipsis in key:
        key = None  # not a plain call: no memo (and nothing consumed)
    last = seg._last_prompts
    if key is not None and last is not None and last[0] == key:
        return last[1]
    answer = seg._check_prompts(classes, threshold, background, templates, negatives, head)
    if key is not None:
        seg._last_prompts = (key, answer)
    return answer


def check_prompts(seg, classes, threshold, background, templates, negatives, head=None):
    """(vocabulary, the kernel's threshold, per-class thresholds or None, (P, D) float32
    prototypes: the text names', a fitted head's, then the background names' and
    negatives'), every option checked; the text graph runs here for new names."""
    if head is None:
        vocab = vocabulary(classes)
    else:
        vocab, head = FS.with_head(seg, classes, head)
    threshold, per_class = BG.class_thresholds(threshold, vocab.classes,
                                               seg.info.background_threshold)  # fmt: skip
    if background is None:
        bg = list(seg.info.background_classes)
    else:  # an empty list switches the bundle's background classes off
        bg = check_classes(background) if len(background) else []
    asked = FS.asked_names(vocab)  # the text names, and a fitted head's classes
    bg = [b for b in bg if b not in asked]
    cand = BG.candidates(seg.info, negatives)
    if negatives is not True and cand and set(asked) <= set(cand):
        raise ValueError(
            f"negatives {cand!r} name every class of the query: nothing could be found; "
            "give negatives that are not what you ask for"
        )
    bg += BG.negatives(asked, [c for c in cand if c not in bg],
                       lambda n: seg.text_embeddings(n, templates),
                       seg.info.negative_max_cosine)  # fmt: skip
    if head is None:
        return vocab, threshold, per_class, seg.text_embeddings(vocab.names + bg, templates)
    n_text = len(vocab.names) - len(head.prototypes)
    parts = [seg.text_embeddings(vocab.names[:n_text], templates)] if n_text else []
    parts.append(head.prototypes)
    if bg:
        parts.append(seg.text_embeddings(bg, templates))
    return vocab, threshold, per_class, np.concatenate(parts).astype(np.float32)
