"""Segments for the pixel-segment contrastive loss: spherical k-means per image
(``train.kmeans``) groups each view's pixels; ``segment_means`` pools them.

Assignments are computed without gradient; segment embeddings (the normalised mean
of their pixels' embeddings) carry gradient back to the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_means(
    x: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image segment means of features.

    Args:
        x: (B, P, C) features (student or teacher embeddings).
        labels: (B, P) segment index in [0, k).
    Returns:
        (B, k, C) unit-length means (zero rows for empty segments) and (B, k) pixel counts.
    """
    B, P, C = x.shape
    sums = torch.zeros(B, k, C, device=x.device, dtype=x.dtype)
    sums = sums.scatter_add(1, labels[..., None].expand(B, P, C), x)
    counts = torch.zeros(B, k, device=x.device).scatter_add_(
        1, labels, torch.ones_like(labels, dtype=torch.float32)
    )
    return F.normalize(sums, dim=-1), counts
