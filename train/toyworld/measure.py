"""How well the toy-world teacher sees the world, on held-out scenes: zero-shot presence
recall@k and average precision per class (stuff, things, against the things' base
rate), and the AP of a linear probe on its image embeddings (does the image encoder
see a class the text side cannot name?). ``measure`` is the report
``python -m train.toyworld.teacher`` prints during and after pretraining."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clips4rt.bundle import OPENAI_MEAN, OPENAI_STD
from clips4rt.export.clip_loader import preprocess_stats
from train.toyworld import world as toyworld

HELDOUT_SEED = 2000  # scene seed of the held-out report (training: teacher.TRAIN_SEED)


def image_batch(scenes, size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """uint8 scenes (or HxWx3 uint8 arrays) -> float (B, 3, size, size), normalised with
    ``mean``/``std`` (the teacher's, 0-1 RGB). Arrays of one shape are resized together
    (region crops come in many sizes)."""
    arrays = [getattr(s, "image", s) for s in scenes]
    x = torch.empty(len(arrays), 3, size, size)
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        batch = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2)
        x[idx] = F.interpolate(
            batch.float() / 255, size=(size, size), mode="bilinear", antialias=True,
            align_corners=False,
        )  # fmt: skip
    mean, std = (torch.tensor(t).view(1, 3, 1, 1) for t in (mean, std))
    return (x - mean) / std


@torch.no_grad()
def _similarities(model, tokenizer, scenes, size: int, features: bool = False):
    """(scenes, classes) cosine of each scene's image embedding to "a photo of a {c}."
    (and the (scenes, D) image embeddings themselves with ``features``)."""
    model.eval()
    device = next(model.parameters()).device
    stats = preprocess_stats(model)
    text = model.encode_text(
        tokenizer([f"a photo of a {c}." for c in toyworld.CLASSES]).to(device), normalize=True
    )
    img = torch.cat(
        [
            model.encode_image(
                image_batch(scenes[i : i + 128], size, *stats).to(device), normalize=True
            ).cpu()
            for i in range(0, len(scenes), 128)
        ]
    )
    model.train()
    if features:
        return (img @ text.cpu().T).numpy(), img.numpy()
    return (img @ text.cpu().T).numpy()


def _recall(sim: np.ndarray, scenes) -> float:
    hits = total = 0
    for s, row in zip(scenes, sim):
        present = {toyworld.CLASSES.index(c) for c in s.classes}
        top = np.argsort(-row, kind="stable")[: len(present)]
        hits += len(present & set(top.tolist()))
        total += len(present)
    return hits / total


def presence(scenes) -> np.ndarray:
    """(scenes, classes) bool: which of ``toyworld.CLASSES`` each scene contains."""
    return np.array([[c in s.classes for c in toyworld.CLASSES] for s in scenes], bool)


def _ap(sim: np.ndarray, present: np.ndarray) -> dict[str, float]:
    return {c: average_precision(sim[:, j], present[:, j]) for j, c in enumerate(toyworld.CLASSES)}


def presence_recall(model, tokenizer, scenes, size: int) -> float:
    """Mean over scenes of |top-k classes by image-text similarity & present| / k."""
    return _recall(_similarities(model, tokenizer, scenes, size), scenes)


def presence_ap(model, tokenizer, scenes, size: int) -> dict[str, float]:
    """Per class: average precision of ranking the scenes by global image-text
    similarity ("a photo of a {c}.") for "does the scene contain c". A class the
    teacher never learned scores its base rate (its share of scenes)."""
    return _ap(_similarities(model, tokenizer, scenes, size), presence(scenes))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking by ``scores`` (descending) for boolean ``positive``:
    the mean, over the positives, of the precision at each one's rank (0 without any)."""
    y = np.asarray(positive, bool)[np.argsort(-np.asarray(scores), kind="stable")]
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float(precision[y].sum() / max(y.sum(), 1))


def probe_ap(features: np.ndarray, present: np.ndarray, iters: int = 100) -> np.ndarray:
    """Per class, the average precision of a linear probe on image embeddings: logistic
    regression (L-BFGS, L2 1e-3) fit on the first half of the rows, scored on the
    second. ``present`` (rows, classes) bool. It tells an image encoder that does not
    see a class (probe ~ base rate) from a text side that does not name it (probe high,
    zero-shot low)."""
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(present, dtype=torch.float64)
    half = len(x) // 2
    mu, sd = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x[:half] @ w + b, y[:half])
        loss = loss + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = (x[half:] @ w + b).numpy()
    return np.array([average_precision(scores[:, j], present[half:, j]) for j in range(y.shape[1])])


def measure(model, tokenizer, size: int, heldout=None) -> dict:
    """Held-out report: recall@k, stuff / things mAP (zero-shot, "a photo of a {c}.")
    against the things' base rate, and the things mAP of a linear probe on the image
    embeddings (``probe_ap``); toy seed HELDOUT_SEED, 500 scenes unless ``heldout``
    gives them."""
    if heldout is None:
        heldout = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(500)]
    sim, feats = _similarities(model, tokenizer, heldout, size, features=True)  # one pass
    present = presence(heldout)
    ap = _ap(sim, present)
    probe = dict(zip(toyworld.CLASSES, probe_ap(feats, present)))
    base = dict(zip(toyworld.CLASSES, present.mean(0)))
    mean = lambda names, d: round(float(np.mean([d[c] for c in names])), 4)  # noqa: E731
    return {
        "presence_recall_at_k": _recall(sim, heldout),
        "stuff_map": mean(toyworld.STUFF, ap),
        "things_map": mean(toyworld.THINGS, ap),
        "things_base_rate": mean(toyworld.THINGS, base),
        "things_probe_map": mean(toyworld.THINGS, probe),
        "heldout": f"toyworld seed {HELDOUT_SEED}, {len(heldout)} scenes",
    }
