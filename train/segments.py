"""Segments for the pixel-segment contrastive loss: spherical k-means per image.

Assignments are computed without gradient; segment embeddings (the normalised mean
of their pixels' embeddings) carry gradient back to the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def kmeans_segments(
    z: torch.Tensor,
    k: int,
    iters: int = 10,
    gen: torch.Generator | None = None,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Spherical k-means of each image's pixel embeddings.

    Args:
        z: (B, P, D) unit-length pixel embeddings.
        k: segments per image (k <= P).
        first: (B,) index of each image's first seed pixel (default: drawn from gen).
    Returns:
        (B, P) int64 segment index in [0, k) of every pixel.
    """
    B, P, D = z.shape
    if not 1 <= k <= P:
        raise ValueError(f"need 1 <= k <= pixels per image, got k={k}, P={P}")
    z = z.float()
    # farthest-point seeding: a random first pixel, then each next one the pixel least
    # similar to the centroids so far (random seeding often puts two in one cluster)
    if first is None:
        first = torch.randint(P, (B,), generator=gen)
    first = first.to(z.device)
    cent = z[torch.arange(B, device=z.device), first][:, None, :]
    best = torch.einsum("bpd,bkd->bpk", z, cent)[..., 0]
    for _ in range(1, k):
        nxt = best.argmin(dim=1)
        c = z[torch.arange(B, device=z.device), nxt][:, None, :]
        cent = torch.cat([cent, c], dim=1)
        best = torch.maximum(best, torch.einsum("bpd,bkd->bpk", z, c)[..., 0])
    for _ in range(iters):
        assign = torch.einsum("bpd,bkd->bpk", z, cent).argmax(-1)
        sums = torch.zeros(B, k, D, device=z.device).scatter_add_(
            1, assign[..., None].expand(B, P, D), z
        )
        norm = sums.norm(dim=-1, keepdim=True)
        cent = torch.where(norm > 0, sums / norm.clamp(min=1e-12), cent)  # empty: keep centroid
    return torch.einsum("bpd,bkd->bpk", z, cent).argmax(-1)


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
