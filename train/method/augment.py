"""Two-view augmentation with kept geometry (CLIP-S4 / SegSort).

Each view is a random resized crop (+ horizontal flip) of the image, resampled by
``grid_sample`` from a sampling grid that maps every output pixel to a point of the
original image. Keeping the grids gives, for free:

- pixel correspondence between the two views (``correspondence``);
- the teacher's dense features, computed once on the full image, warped into each
  view with the same grids (``warp``).

Photometric jitter (brightness, contrast, saturation, hue rotation, blur) changes
colours only, so it leaves the geometry alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 96  # output side of each view, pixels
    scale: tuple[float, float] = (0.35, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05  # fraction of a full turn
    blur: float = 0.2  # probability of a 3x3 box blur

    def scaled(self, jitter: float) -> AugmentConfig:
        """The colour jitter (brightness, contrast, saturation, hue) times ``jitter``;
        the random draws stay the same, so 1 is this config exactly."""
        return replace(self, brightness=self.brightness * jitter, contrast=self.contrast * jitter,
                       saturation=self.saturation * jitter, hue=self.hue * jitter)  # fmt: skip


def sample_boxes(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 5) crop boxes in normalised [-1, 1] image coordinates: (cx, cy, half_w, half_h,
    flip), square-ish crops of area ``scale`` and aspect ``ratio``."""
    area = torch.empty(n).uniform_(*cfg.scale, generator=gen)
    logr = torch.empty(n).uniform_(*map(torch.log, torch.tensor(cfg.ratio)), generator=gen)
    r = torch.exp(logr)
    hw = torch.clamp(torch.sqrt(area * r), max=1.0)  # half sizes in units of the half image
    hh = torch.clamp(torch.sqrt(area / r), max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - hw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - hh)
    flip = (torch.rand(n, generator=gen) < cfg.flip).float()
    return torch.stack([cx, cy, hw, hh, flip], 1)


def grids(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, h, w, 2) sampling grids (x, y in [-1, 1], align_corners=False) of an h x w
    output of each box."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    cx, cy, hw, hh, flip = (boxes[:, i, None, None] for i in range(5))
    gx = xs[None, None, :] * torch.where(flip > 0, -1.0, 1.0) * hw + cx
    gy = ys[None, :, None] * hh + cy
    return torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample (n, C, H, W) maps of the full images at ``grid`` (n, h, w, 2)."""
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)


def jitter_params(n: int, cfg: AugmentConfig, gen: torch.Generator) -> dict:
    """Random photometric parameters of n images (drawn for a whole global batch, so
    that every rank of a distributed run can take its own slice)."""
    u = lambda a: 1 + (torch.rand(n, generator=gen) * 2 - 1) * a  # noqa: E731
    return {
        "brightness": u(cfg.brightness),
        "contrast": u(cfg.contrast),
        "saturation": u(cfg.saturation),
        "hue": (torch.rand(n, generator=gen) * 2 - 1) * cfg.hue * 2 * torch.pi,
        "blur": torch.rand(n, generator=gen) < cfg.blur,
    }


def jitter(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Photometric jitter of (n, 3, h, w) images in [0, 1] with parameters ``p``
    (``jitter_params``, n rows): brightness, contrast, saturation, hue rotation, blur."""
    col = lambda t: t[:, None, None, None]  # noqa: E731
    x = x * col(p["brightness"])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * col(p["contrast"]) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * col(p["saturation"]) + gray
    # rotate chroma around the gray axis k = (1, 1, 1)/sqrt(3) (Rodrigues)
    c, s = torch.cos(p["hue"])[:, None, None], torch.sin(p["hue"])[:, None, None]
    kx = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / 3**0.5
    rot = c * torch.eye(3) + s * kx + (1 - c) * torch.full((3, 3), 1 / 3)
    x = torch.einsum("nij,njhw->nihw", rot, x)
    blur = p["blur"]
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.clamp(0, 1)


def correspondence(boxes_a: torch.Tensor, boxes_b: torch.Tensor, h: int, w: int):
    """For each pixel of an h x w map of view a, the flat index of the pixel of view b
    that sees the same image point, or -1 where view b does not see it.

    Returns (n, h * w) int64."""
    ga = grids(boxes_a, h, w)  # image coordinates of view a's pixels
    cx, cy, hw, hh, flip = (boxes_b[:, i, None, None] for i in range(5))
    u = (ga[..., 0] - cx) / hw * torch.where(flip > 0, -1.0, 1.0)  # view b coordinates
    v = (ga[..., 1] - cy) / hh
    inside = (u.abs() <= 1) & (v.abs() <= 1)
    col = ((u + 1) / 2 * w).floor().clamp(0, w - 1).long()
    row = ((v + 1) / 2 * h).floor().clamp(0, h - 1).long()
    idx = row * w + col
    return torch.where(inside, idx, torch.full_like(idx, -1)).flatten(1)
