"""Spherical k-means, the one k-means of the training side: segments of each view
(``train.method``), unknown prototypes (``train.method.prototypes``), unsupervised
evaluation (``train.evaluate``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def spherical_kmeans(
    z: torch.Tensor,
    k: int,
    iters: int = 10,
    seeding: str = "farthest",
    gen: torch.Generator | None = None,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of each of B sets of unit vectors: the one k-means of the
    training side (segments per view, unknown prototypes, unsupervised evaluation).

    Args:
        z: (B, P, D) unit-length vectors (float; computed in float32).
        k: clusters per set (1 <= k <= P).
        iters: Lloyd iterations after seeding (an empty cluster keeps its centroid).
        seeding: ``"farthest"``: a first vector (``first``, else drawn from ``gen``), then
            each next the vector least similar to the centroids so far: deterministic and
            never two seeds in one tight cluster, the choice for a view's few hundred
            pixels; ``"kmeans++"``: each next seed drawn with probability proportional
            to its squared cosine distance (from ``gen``): robust to outliers, the choice
            for large samples.
        first: (B,) index of each set's first seed (``"farthest"`` only).
    Returns:
        (B, P) int64 cluster of every vector, and (B, k, D) unit centroids.
    """
    B, P, D = z.shape
    if not 1 <= k <= P:
        raise ValueError(f"need 1 <= k <= vectors per set, got k={k}, P={P}")
    if seeding not in ("farthest", "kmeans++"):
        raise ValueError(f"seeding must be 'farthest' or 'kmeans++', got {seeding!r}")
    z = z.float()
    rows = torch.arange(B, device=z.device)
    if first is None or seeding == "kmeans++":
        first = torch.randint(P, (B,), generator=gen)
    cent = z[rows, first.to(z.device)][:, None, :]
    best = torch.einsum("bpd,bkd->bpk", z, cent)[..., 0]  # max cosine to the seeds so far
    for _ in range(1, k):
        if seeding == "farthest":
            nxt = best.argmin(dim=1)
        else:
            p = (1 - best).clamp(min=0).square().cpu()
            p = torch.where(p.sum(1, keepdim=True) > 0, p, torch.ones_like(p))
            nxt = torch.multinomial(p, 1, generator=gen)[:, 0].to(z.device)
        c = z[rows, nxt][:, None, :]
        cent = torch.cat([cent, c], dim=1)
        best = torch.maximum(best, torch.einsum("bpd,bkd->bpk", z, c)[..., 0])
    for _ in range(iters):
        assign = torch.einsum("bpd,bkd->bpk", z, cent).argmax(-1)
        # one-hot matmul, not scatter_add: deterministic on CUDA too
        sums = F.one_hot(assign, k).to(z.dtype).transpose(1, 2) @ z
        norm = sums.norm(dim=-1, keepdim=True)
        cent = torch.where(norm > 0, sums / norm.clamp(min=1e-12), cent)  # empty: keep centroid
    return torch.einsum("bpd,bkd->bpk", z, cent).argmax(-1), cent


@torch.no_grad()
def best_kmeans(
    z: torch.Tensor, k: int, restarts: int, gen: torch.Generator | None = None, iters: int = 30
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """k-means++ spherical k-means of (P, D) unit vectors from ``restarts`` seedings
    (drawn from ``gen`` in turn); the run with the highest total cosine of the vectors to
    their centroids. Returns its (P,) clusters, (k, D) centroids and that total."""
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    best = None
    for _ in range(restarts):
        ids, cent = spherical_kmeans(z[None], k, iters, "kmeans++", gen)
        fit = float(torch.einsum("pd,pd->", z.float(), cent[0][ids[0]]))
        if best is None or fit > best[2]:
            best = (ids[0], cent[0], fit)
    return best
