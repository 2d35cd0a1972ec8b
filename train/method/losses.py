"""CLIP-S4 losses: pixel-segment contrastive, embedding consistency,
semantic consistency over known + unknown prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.contrastive import pixel_segment_contrastive


def contrastive_loss(
    z: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    concentration: float,
    reduction: str = "mean",
):
    """-log(sum_{S+} e^{k z.v} / sum_all e^{k z.v}), mean (or sum) over pixels with positives.

    z (N, D) pixel embeddings, v (M, D) segment embeddings, pos (N, P) positive segment
    indices (-1 = none). Triton kernels on CUDA, the torch reference elsewhere."""
    return pixel_segment_contrastive(z, v, pos, scale=concentration, reduction=reduction)


def teacher_agreement(t: torch.Tensor, threshold: float) -> torch.Tensor:
    """(M, M) bool: segments i and j have teacher targets (``t`` (M, D)) with cosine
    above ``threshold``; a pixel's row is its own segment's. No gradient."""
    with torch.no_grad():
        a = F.normalize(t.float(), dim=-1)
        return (a @ a.T) > threshold


def filtered_contrastive_loss(
    z: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    concentration: float,
    agree: torch.Tensor,
    mode: str = "drop",
    reduction: str = "mean",
):
    """The pixel-segment contrast with the teacher's false negatives handled: segments the
    teacher calls alike (``agree`` (N, M) bool, ``teacher_agreement``) are left out of a
    pixel's negatives (``drop``) or counted among its positives (``positive``). The torch
    formulation (materialises the N x M logits: no Triton kernel for it)."""
    if mode not in ("drop", "positive"):
        raise ValueError(f"mode must be 'drop' or 'positive', got {mode!r}")
    logits = concentration * (z.float() @ v.float().T)
    valid = pos >= 0
    is_pos = torch.zeros_like(agree)
    rows = torch.arange(len(z), device=z.device)[:, None].expand_as(pos)
    is_pos[rows[valid], pos[valid].long()] = True
    if mode == "drop":
        denom = logits.masked_fill(agree & ~is_pos, float("-inf"))
        num = logits.masked_fill(~is_pos, float("-inf"))
    else:
        denom = logits
        num = logits.masked_fill(~(is_pos | agree), float("-inf"))
    loss = torch.logsumexp(denom, 1) - torch.logsumexp(num, 1)
    loss = torch.where(valid.any(1), loss, torch.zeros_like(loss))
    if reduction == "mean":
        return loss.sum() / valid.any(1).sum().clamp(min=1)
    return _reduce(loss, reduction)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return x.mean() if reduction == "mean" else x.sum()


def embedding_consistency(v: torch.Tensor, t: torch.Tensor, reduction: str = "mean"):
    """Mean (or sum) of 1 - cos between student segment embeddings v (M, D) and the
    teacher's segment features t (M, D) (no gradient to the teacher)."""
    cos = (F.normalize(v, dim=-1) * F.normalize(t.detach(), dim=-1)).sum(-1)
    return _reduce(1 - cos, reduction)


def semantic_consistency(
    v: torch.Tensor,
    t: torch.Tensor,
    protos: torch.Tensor,
    student_scale: float,
    teacher_scale: float,
    reduction: str = "mean",
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the student's prediction over the prototypes (known text
    embeddings + unknown prototypes, (K, D)) to the teacher's, per segment. ``center``
    (K,) is subtracted from the teacher's cosines before its softmax (``Centering``)."""
    cos = F.normalize(t.detach(), dim=-1) @ protos.T
    if center is not None:
        cos = cos - center
    target = torch.softmax(teacher_scale * cos, dim=-1)
    logp = torch.log_softmax(student_scale * F.normalize(v, dim=-1) @ protos.T, dim=-1)
    return _reduce(-(target * logp).sum(-1), reduction)
