"""Known and unknown prototypes for the semantic consistency loss.

Known prototypes: text embeddings of the known class names, prompt-ensembled
(templates averaged per class, as in the CLIP-S4 paper), fixed.

Unknown prototypes (how they are learned): a teacher segment feature is
"unexplained" when the teacher's softmax over the *known* prototypes gives its best
class a probability under ``explain_threshold``. Unexplained features enter a FIFO
memory of ``memory`` vectors. Every ``refresh_every`` steps, once the memory holds at
least ``4 * count`` vectors, spherical k-means with ``count`` clusters runs on it; the
new centroids are matched to the current prototypes (Hungarian, by cosine) and
blended in with momentum ``momentum`` (the first time they are taken as they are).
Until then no unknown prototype exists and the semantic loss uses the known ones.

Where the unknown prototypes sit (``space``): ``"image"`` uses the centroids as they
are, i.e. in the teacher's image-feature cone, while the known prototypes are text
embeddings (CLIP's modality gap: an image feature is far closer to an image centroid
than to any text embedding, so the teacher's target puts nearly all mass on the
unknown prototype). ``"text"`` moves each centroid across the gap before use:
normalize(c - mean image feature + mean known text prototype), the mean image feature
being the running mean of every teacher segment feature observed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from train.kmeans import spherical_kmeans


def text_prototypes(encode_text, tokenize, classes, templates) -> torch.Tensor:
    """(K, D) unit prototypes: per class, mean of unit prompt embeddings, re-normalised."""
    with torch.no_grad():
        prompts = [t.format(c) for c in classes for t in templates]
        emb = F.normalize(encode_text(tokenize(prompts)).float(), dim=-1)
        emb = emb.reshape(len(classes), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


class UnknownPrototypes:
    def __init__(
        self,
        count: int,
        dim: int,
        memory: int = 4096,
        explain_threshold: float = 0.5,
        refresh_every: int = 50,
        momentum: float = 0.5,
        seed: int = 0,
        space: str = "image",
    ):
        if space not in ("image", "text"):
            raise ValueError(f"unknown prototype space {space!r}; choose 'image' or 'text'")
        self.space = space
        self.feature_sum, self.seen = torch.zeros(dim), 0
        self.count, self.dim = count, dim
        self.memory = torch.zeros(0, dim)
        self.capacity, self.threshold = memory, explain_threshold
        self.refresh_every, self.momentum = refresh_every, momentum
        self.protos = torch.zeros(0, dim)
        self.seed = seed
        self.updates = 0

    @torch.no_grad()
    def observe(self, t: torch.Tensor, known: torch.Tensor, teacher_scale: float) -> int:
        """Add the unexplained rows of teacher segment features t (M, D); returns how many."""
        t = F.normalize(t.detach().float().cpu(), dim=-1)
        self.feature_sum += t.sum(0)
        self.seen += len(t)
        p = torch.softmax(teacher_scale * t @ known.cpu().T, dim=-1).max(-1).values
        new = t[p < self.threshold]
        self.memory = torch.cat([self.memory, new])[-self.capacity :]
        self.updates += 1
        if self.count and self.updates % self.refresh_every == 0:
            self.refresh()
        return len(new)

    @torch.no_grad()
    def refresh(self) -> None:
        from scipy.optimize import linear_sum_assignment

        if len(self.memory) < 4 * self.count:
            return
        gen = torch.Generator().manual_seed(self.seed)
        cent = spherical_kmeans(self.memory[None], self.count, 30, "kmeans++", gen)[1][0]
        if len(self.protos) == self.count:
            rows, cols = linear_sum_assignment((self.protos @ cent.T).numpy(), maximize=True)
            cent = cent[cols[np.argsort(rows)]]
            cent = F.normalize(self.momentum * self.protos + (1 - self.momentum) * cent, dim=-1)
        self.protos = cent

    def prototypes(self, known: torch.Tensor) -> torch.Tensor:
        """The (count, D) unknown prototypes as the semantic loss uses them, beside the
        known text prototypes ``known`` (K, D): see ``space`` in the module docstring."""
        protos = self.protos.to(known.device)
        if self.space == "image" or not len(protos):
            return protos
        gap = known.float().mean(0) - (self.feature_sum / max(self.seen, 1)).to(known.device)
        return F.normalize(protos + gap, dim=-1)

    def state_dict(self) -> dict:
        return {
            "memory": self.memory,
            "protos": self.protos,
            "updates": self.updates,
            "feature_sum": self.feature_sum,
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.memory, self.protos, self.updates = state["memory"], state["protos"], state["updates"]
        self.feature_sum = state.get("feature_sum", torch.zeros(self.dim))
        self.seen = state.get("seen", 0)
