"""Segment crops: the teacher's global view of each student segment (``--teacher_targets``).

A CLIP's dense maps are its weak side: its last block was trained to pool the whole
image into one embedding, not to describe each patch. Its global embedding of a
region is its strong side. On the toy teacher (issue 12, BENCHMARKS.md), ground-truth
segments named by their SCLIP features averaged over the segment: 5 % of things right
(argmax over all 20 names); the same segments cut out (masked, square box around them,
resized to the teacher's input) and encoded globally: 62 % (with the teacher's logits
centred per class, ``Centering``).

For each view and each non-empty segment of the student's k-means, the view is
masked to the segment (other pixels mid-grey), cut to the square box around it (one
cell of margin) and resized to the teacher's input size; the teacher's global
embedding of the crop is that segment's target. Measured on ground-truth segments of
the toy teacher (all 20 names, centred logits; stuff / things named right): mid-grey
fill 0.84 / 0.62, the mean colour 0.53 / 0.63, no mask (the box only) 0.63 / 0.06.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_crops(
    views: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    grid: tuple[int, int],
    size: int,
    fill: torch.Tensor | float = 0.0,
    context: float = 0.0,
) -> torch.Tensor:
    """Masked square crops of every non-empty segment.

    Args:
        views: (B, 3, S, S) normalised view images.
        labels: (B, h*w) segment index in [0, k) of each cell of the h x w grid.
        grid: (h, w) of ``labels``.
        size: side of the crops (the teacher's input size).
        fill: the value of pixels outside the segment (and outside the view), a scalar or
            (3,) per channel: mid-grey in the teacher's normalisation.
        context: how much of the view shows outside the segment, blended into ``fill``
            (0 = ``fill`` alone, 1 = the box unmasked).
    Returns:
        (M, 3, size, size), one crop per (image, segment) with pixels, image-major then
        segment order (the order of ``segment_means(...)[counts > 0]``).
    """
    B = views.shape[0]
    h, w = grid
    onehot = F.one_hot(labels.long(), k).view(B, h, w, k).permute(0, 3, 1, 2)  # B,k,h,w
    present = onehot.flatten(2).any(-1)  # (B, k)
    img, seg = torch.nonzero(present, as_tuple=True)
    masks = onehot[img, seg].float()  # (M, h, w)
    rows, cols = masks.any(2), masks.any(1)  # (M, h), (M, w)
    ar_h, ar_w = torch.arange(h, device=views.device), torch.arange(w, device=views.device)
    big = torch.tensor(10**6, device=views.device)
    y0 = torch.where(rows, ar_h, big).min(1).values
    y1 = torch.where(rows, ar_h, -big).max(1).values + 1
    x0 = torch.where(cols, ar_w, big).min(1).values
    x1 = torch.where(cols, ar_w, -big).max(1).values + 1
    # box in [-1, 1] coordinates, one cell of margin, square (the longer side)
    cy, cx = (y0 + y1).float() / h - 1, (x0 + x1).float() / w - 1
    half = torch.maximum((y1 - y0 + 2).float() / h, (x1 - x0 + 2).float() / w).clamp(max=1.0)
    theta = torch.zeros(len(img), 2, 3, device=views.device)
    theta[:, 0, 0], theta[:, 0, 2] = half, cx
    theta[:, 1, 1], theta[:, 1, 2] = half, cy
    S = views.shape[-1]
    full = F.interpolate(masks[:, None], size=(S, S), mode="nearest")  # (M, 1, S, S)
    fill = torch.as_tensor(fill, dtype=views.dtype, device=views.device).reshape(1, -1, 1, 1)
    keep = full if not context else full + context * (1 - full)
    masked = (views[img] - fill) * keep.to(views.dtype)  # 0 outside = `fill` below
    at = F.affine_grid(theta, [len(img), 3, size, size], align_corners=False)
    out = F.grid_sample(masked, at.to(views.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # fmt: skip
    return out + fill


class Centering:
    """DINO's centring of the teacher's class logits: an exponential moving average of
    the mean cosine of the teacher's targets to each prototype, subtracted before the
    teacher's softmax. A class the teacher scores high on everything (the toy teacher's
    stuff names, with every crop showing some stuff) stops winning every segment; the
    student's own logits are left as they are, so what it learns shows at inference
    without any centring there.

    ``strength`` is the share of the centre subtracted (1 = DINO's full centring);
    ``momentum`` 0.9 = the last ~10 steps; an entry restarts when its prototype moves
    (the unknown prototypes, re-clustered every ``--unknown_refresh`` steps)."""

    def __init__(self, strength: float = 1.0, momentum: float = 0.9):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"centring momentum must be in (0, 1), got {momentum}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"centring strength must be in (0, 1], got {strength}")
        self.strength, self.momentum = strength, momentum
        self.center: torch.Tensor | None = None
        self.protos: torch.Tensor | None = None

    def update(self, batch_mean: torch.Tensor, protos: torch.Tensor) -> None:
        """Fold in the mean cosine (K,) of this step's targets (all ranks' mean) to the
        prototypes ``protos`` (K, D); entries of prototypes that moved since the last
        step restart from this step's mean."""
        batch_mean, protos = batch_mean.detach().float(), protos.detach().float()
        if self.center is None or self.center.shape != batch_mean.shape:
            self.center, self.protos = batch_mean.clone(), protos.clone()
            return
        moved = (protos - self.protos.to(protos.device)).abs().amax(-1) > 1e-6
        self.center = self.center.to(batch_mean.device)
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
        self.center[moved] = batch_mean[moved]
        self.protos = protos.clone()

    def get(self, k: int, device) -> torch.Tensor:
        """The (k,) centre to subtract (zeros before the first update)."""
        if self.center is None or self.center.numel() != k:
            return torch.zeros(k, device=device)
        return self.strength * self.center.to(device)

    def state_dict(self) -> dict:
        return {"strength": self.strength, "momentum": self.momentum, "center": self.center,
                "protos": self.protos}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.strength, self.momentum = float(state["strength"]), float(state["momentum"])
        self.center, self.protos = state["center"], state["protos"]
