"""Validation during training: a student's language-mode mIoU on a VOC-style folder,
computed in torch (no export), the way the runtime segments: the image resized to a
short side of ``size`` (multiples of the stride), pixel embeddings, cosine to the class
prototypes, bilinear upsampling to the image, argmax."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.evaluate.metrics import confusion, summarize
from train.evaluate.voc import VOCFolder


class Validator:
    """``Validator(folder, prototypes, mean, std, size)(student, device)`` -> the
    ``summarize`` report (mIoU all / known / unknown in %, per class).

    Args:
        folder: VOC-style folder (``train.evaluate.voc``); its masks are required.
        prototypes: class names -> (K, D) unit text prototypes (the teacher's).
        mean, std: the student's input statistics (0-1 RGB).
        size: short side the images are resized to.
        known: class names named in training; the folder's other classes count as
            unknown unless its ``split.json`` says which are.
        limit: validate on the first ``limit`` images only.
    """

    def __init__(
        self,
        folder,
        prototypes: Callable[[list[str]], torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        size: int,
        known: Sequence[str] = (),
        limit: int | None = None,
    ):
        self.data = VOCFolder(folder, limit=limit)
        masks = [self.data.mask_path(p) for p in self.data.images]
        missing = [m for m in masks if not m.is_file()]
        if missing:
            raise FileNotFoundError(
                f"--val={folder}: {len(missing)} of {len(masks)} images have no mask (first: "
                f"{missing[0]}); validation needs SegmentationClass/<id>.png for every image"
            )
        self.classes = self.data.classes
        split = self.data.split.get("unknown")
        self.unknown = list(split) if split is not None else [
            c for c in self.classes if c not in set(known)
        ]  # fmt: skip
        self.protos = prototypes(self.classes).float()
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.size = size

    @torch.no_grad()
    def __call__(self, student: torch.nn.Module, device) -> dict:
        was_training = student.training
        student.eval()
        stride = int(getattr(student, "stride", 1))
        n = len(self.classes)
        conf = np.zeros((n, n + 1), np.int64)
        protos = self.protos.to(device)
        try:
            for i in range(len(self.data)):
                image, mask = self.data.load(i)
                h, w = image.shape[:2]
                s = self.size / min(h, w)
                hh, ww = (max(stride, round(v * s / stride) * stride) for v in (h, w))
                x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255)
                x = F.interpolate(x, size=(hh, ww), mode="bilinear", antialias=True)
                z = F.normalize(student(((x - self.mean) / self.std).to(device)).float(), dim=1)
                cos = torch.einsum("kd,bdhw->bkhw", protos, z)
                up = F.interpolate(cos, size=(h, w), mode="bilinear", align_corners=False)
                conf += confusion(mask, up[0].argmax(0).cpu().numpy().astype(np.int32), n)
        finally:
            student.train(was_training)
        return summarize(conf, self.classes, self.unknown)
