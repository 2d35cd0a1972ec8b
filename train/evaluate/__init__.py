"""Evaluation of any bundle on a VOC-style folder, through ``clips4rt.Segmenter`` (what
users deploy): language mode (mIoU all / known / unknown), unsupervised (k-means
clusters matched to classes) and linear probe (``modes``); confusion matrices, mIoU and
the Hungarian matching (``metrics``); the VOC-style folder reader (``voc``).

    python -m train.evaluate --model toy.onnx --data data/toy_val [--json out.json]
"""

from train.evaluate.modes import evaluate, main

__all__ = ["evaluate", "main"]
