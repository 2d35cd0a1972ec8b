"""The learning-rate schedule of every training run here (CLIP-S4 and the toy teacher)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int):
    """LambdaLR: linear warmup over ``warmup`` steps (at least 1), then cosine decay to 0
    at ``steps``; the factor stays 0 past ``steps``. ``scheduler.step()`` once a step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    warm = max(1, warmup)

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
