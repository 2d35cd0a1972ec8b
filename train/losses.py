"""CLIP-S4 losses (DESIGN.md): pixel-segment contrastive, embedding consistency,
semantic consistency over known + unknown prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.contrastive import pixel_segment_contrastive


def contrastive_loss(z: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, concentration: float):
    """Mean over pixels with positives of -log(sum_{S+} e^{k z.v} / sum_all e^{k z.v}).

    z (N, D) pixel embeddings, v (M, D) segment embeddings, pos (N, P) positive segment
    indices (-1 = none). Triton kernels on CUDA, the torch reference elsewhere."""
    return pixel_segment_contrastive(z, v, pos, scale=concentration)


def embedding_consistency(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos) between student segment embeddings v (M, D) and the teacher's
    segment features t (M, D) (no gradient to the teacher)."""
    return (1 - (F.normalize(v, dim=-1) * F.normalize(t.detach(), dim=-1)).sum(-1)).mean()


def semantic_consistency(
    v: torch.Tensor,
    t: torch.Tensor,
    protos: torch.Tensor,
    student_scale: float,
    teacher_scale: float,
) -> torch.Tensor:
    """Cross-entropy of the student's prediction over the prototypes (known text
    embeddings + unknown prototypes, (K, D)) to the teacher's, per segment."""
    target = torch.softmax(teacher_scale * F.normalize(t.detach(), dim=-1) @ protos.T, dim=-1)
    logp = torch.log_softmax(student_scale * F.normalize(v, dim=-1) @ protos.T, dim=-1)
    return -(target * logp).sum(-1).mean()
