"""Which teacher target names a student segment: the dense mean or the segment's crop, by
the segment's size (issue 31: why the unknown things stay unsegmented).

    python benchmarks/crop_targets.py --checkpoint out/abl/c5b32_s0/step_0000500.pt

Toy scenes of ``--seed`` (not a training or held-out seed), one augmented view each as in
training (``train.method.augment``, the checkpoint's view size), the checkpoint's student,
k-means into the checkpoint's ``--segments`` segments (``train.kmeans``); each segment's
label is the majority ground-truth class of its cells. Its teacher targets: the dense
features averaged over it (``dense``), the global embedding of its masked crop
(``crop``, ``train.method.crops``) and their sums ``dense + w crop`` (the loop's
``--crop_weight=w``). A target names the segment right when its class is the argmax over
all 20 toy names, raw and centred (the mean cosine of the segments to each name
subtracted first, as ``--teacher_center=1`` does in training). Printed: the share named
right, stuff and thing segments apart, by area (share of the view's cells); then two
gates that would give a segment its crop target alone: by area, and by the crop's own
probability of naming a thing. ``--context A`` shows the view outside each segment at
share A (``train.method.crops.segment_crops``' ``context``) instead of the grey fill alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.01)
WEIGHTS = (0.0, 1.0, 2.0, 4.0)  # dense + w * crop; the crop alone is added last


def targets(checkpoint: str, seed: int, scenes: int, context: float = 0.0, batch: int = 32):
    """(areas, is_thing, majority class, dense targets (n, D), crop targets (n, D), text
    prototypes of every toy name (20, D))."""
    import open_clip
    import torch
    import torch.nn.functional as F

    from clips4rt.export.student import build_student
    from clips4rt.prompts import SIMPLE_TEMPLATES
    from train import checkpoint as C
    from train.kmeans import spherical_kmeans
    from train.method import augment as A
    from train.method.config import TrainConfig
    from train.method.loop import Teacher, _views
    from train.method.prototypes import text_prototypes
    from train.method.segments import segment_means
    from train.toyworld import CLASSES, IGNORE, THINGS, make_scene

    ck = C.load(checkpoint)
    cfg = TrainConfig(**ck["config"])
    dev = torch.device("cpu")
    teacher = Teacher(cfg, dev)
    student = build_student(cfg.backbone, teacher.embed_dim, teacher.model.visual, cfg.stride,
                            cfg.decoder_width, False, norm=cfg.decoder_norm,
                            top_stride=cfg.top_stride)  # fmt: skip
    student.load_state_dict(ck["model"])
    student.eval()
    tok = open_clip.get_tokenizer(teacher.name)
    with torch.no_grad():
        protos = text_prototypes(teacher.model.encode_text, tok, list(CLASSES), SIMPLE_TEMPLATES)
    gen = torch.Generator().manual_seed(seed)
    aug = A.AugmentConfig(size=cfg.image_size)
    k = cfg.segments
    area, thing, major, dense, crop = [], [], [], [], []
    for b0 in range(0, scenes, batch):
        sc = [make_scene(seed, i) for i in range(b0, min(scenes, b0 + batch))]
        b = len(sc)
        images = torch.from_numpy(np.stack([s.image for s in sc]))
        masks = torch.from_numpy(np.stack([s.mask for s in sc]).astype(np.int64))
        boxes, jit = A.sample_boxes(b, aug, gen), A.jitter_params(b, aug, gen)
        with torch.no_grad():
            full = teacher.features(images)
            x = _views(images, boxes, jit, cfg, dev, teacher.mean, teacher.std)
            z = student(x)
            h, w = z.shape[-2:]
            zf = z.flatten(2).transpose(1, 2).float()
            lab = spherical_kmeans(zf, k, first=torch.zeros(b, dtype=torch.long))[0]
            t = F.normalize(A.warp(full, A.grids(boxes, h, w)), dim=1).flatten(2).transpose(1, 2)
            td, counts = segment_means(t, lab, k)
            valid = counts.reshape(-1) > 0
            td = F.normalize(td.reshape(-1, td.shape[-1])[valid], dim=-1)
            tc = teacher.crops(x, lab, k, (h, w), context=context)
            gt = A.warp(masks[:, None].float(), A.grids(boxes, h, w), mode="nearest")
            gt = gt[:, 0].long().flatten(1)
        for j, (i, s) in enumerate(torch.nonzero(counts.reshape(b, k) > 0).tolist()):
            g = gt[i][lab[i] == s]
            g = g[g != IGNORE]
            if len(g) == 0:
                continue
            m = int(torch.mode(g).values)
            area.append(float((lab[i] == s).sum()) / (h * w))
            thing.append(CLASSES[m] in THINGS)
            major.append(m)
            dense.append(td[j])
            crop.append(tc[j])
    thing_ids = [CLASSES.index(t) for t in THINGS]
    return (np.array(area), np.array(thing), np.array(major), torch.stack(dense),
            torch.stack(crop), protos, thing_ids)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a training checkpoint (step_*.pt)")
    ap.add_argument("--seed", type=int, default=9000, help="toy-world seed of the scenes")
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--context", type=float, default=0.0, help="0 = grey fill (training's)")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    area, thing, major, dense, crop, protos, thing_ids = targets(
        args.checkpoint, args.seed, args.scenes, args.context
    )
    maj = torch.from_numpy(major)

    def logits(v, centred):
        c = F.normalize(v, dim=-1) @ protos.T
        return c - c.mean(0, keepdim=True) if centred else c

    cols, names = [], []
    for wc in (*WEIGHTS, None):
        v = crop if wc is None else dense + wc * crop
        label = "crop" if wc is None else ("dense" if wc == 0 else f"d+{wc:g}c")
        for centred in (False, True):
            cols.append((logits(v, centred).argmax(1) == maj).numpy())
            names.append(label + (" cen" if centred else ""))
    ok = np.stack(cols, 1).astype(float)
    print(f"{args.checkpoint}: {len(area)} segments ({int(thing.sum())} things) of "
          f"{args.scenes} scenes of seed {args.seed}, context {args.context:g}; share named "
          "right (argmax of 20)")
    print("| area | kind | n | " + " | ".join(names) + " |")
    print("| --- " * (3 + len(names)) + "|")
    for lo, hi in zip(EDGES, EDGES[1:]):
        for kind, sel in (("stuff", ~thing), ("things", thing)):
            m = sel & (area >= lo) & (area < hi)
            if m.any():
                row = " | ".join(f"{x:.2f}" for x in ok[m].mean(0))
                print(f"| {lo:.2f}-{min(hi, 1):.2f} | {kind} | {int(m.sum())} | {row} |")
    # gates: the crop alone for gated segments, the dense mean for the others (centred)
    cd, cc = logits(dense, True), logits(crop, True)
    p_thing = (50 * cc).softmax(-1)[:, thing_ids].sum(-1).numpy()
    print("\n| gate (the crop alone where) | gated stuff | gated things | stuff right | "
          "things right |\n| --- | --- | --- | --- | --- |")  # fmt: skip
    gates = [(f"area < {a}", area < a) for a in (0.02, 0.05, 0.1)]
    gates += [(f"P_crop(thing) > {p}", p_thing > p) for p in (0.5, 0.9, 0.97)]
    both = (logits(dense + crop, True).argmax(1) == maj).numpy()
    print(f"| none: dense + crop (the preset) | - | - | {both[~thing].mean():.2f} | "
          f"{both[thing].mean():.2f} |")  # fmt: skip
    for label, g in [("never (dense)", np.zeros_like(thing)), *gates]:
        pick = torch.where(torch.from_numpy(g)[:, None], cc, cd).argmax(1)
        right = (pick == maj).numpy()
        print(f"| {label} | {g[~thing].mean():.2f} | {g[thing].mean():.2f} | "
              f"{right[~thing].mean():.2f} | {right[thing].mean():.2f} |")  # fmt: skip
    ranks = p_thing.argsort().argsort() + 1.0  # AUC of P_crop(thing) for "is a thing"
    n1, n0 = thing.sum(), (~thing).sum()
    auc = (ranks[thing].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    print(f"\nAUC of P_crop(thing) for telling thing segments from stuff ones: {auc:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
