"""Pretrain the toy-world CLIP teacher: a small open_clip CLIP, contrastive on toy
scenes and their captions, on the CPU.

    python -m train.pretrain_teacher --out train/assets            # ~25 min on 2 cores

Real open_clip model code and BPE tokenizer; the model config is an open_clip JSON
(``train/configs/toy-teacher.json``). Writes ``<out>/toy-teacher.pt`` (open_clip
state dict, float16 to stay small) and ``<out>/toy-teacher.json`` (the config), which
load through the same path as real weights:

    python -m train.export --model-config train/assets/toy-teacher.json \\
        --pretrained train/assets/toy-teacher.pt --dense sclip -o toy.onnx

Reports zero-shot "which classes are present" recall@k on held-out scenes (k = the
number of classes present).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train import toyworld

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "train" / "configs" / "toy-teacher.json"
TRAIN_SEED, HELDOUT_SEED = 1000, 2000  # scene seeds; evaluation sets use other seeds


def _images(scenes, size: int) -> torch.Tensor:
    """uint8 scenes (or HxWx3 uint8 arrays) -> float (B, 3, size, size), normalised like
    CLIP. Arrays of one shape are resized together (region crops come in many sizes)."""
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
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


def region_crop(scene, rng: np.random.Generator, min_frac: float = 0.02):
    """A square crop of ``scene`` and a caption naming only what the crop shows.

    Half the time the crop is centred on one of the scene's things, 1.5-3x its extent
    (close-ups, like single-object web photos), else a random box of 35-100% of the side.
    A class is named when it covers at least ``min_frac`` of the crop and
    ``toyworld.MIN_VISIBLE`` scaled pixels. Returns (uint8 crop, caption)."""
    mask = scene.mask
    H, W = mask.shape
    things = [c for c in scene.classes if c in toyworld.THINGS]
    if things and rng.random() < 0.5:
        ys, xs = np.nonzero(mask == toyworld.CLASSES.index(things[rng.integers(len(things))]))
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        side = int(np.clip(extent * rng.uniform(1.5, 3.0), 24, H))
        cy = (ys.min() + ys.max()) / 2 + rng.uniform(-0.2, 0.2) * extent
        cx = (xs.min() + xs.max()) / 2 + rng.uniform(-0.2, 0.2) * extent
    else:
        side = int(rng.uniform(0.35, 1.0) * H)
        cy, cx = rng.uniform(side / 2, H - side / 2), rng.uniform(side / 2, W - side / 2)
    y0 = int(np.clip(round(cy - side / 2), 0, H - side))
    x0 = int(np.clip(round(cx - side / 2), 0, W - side))
    crop = mask[y0 : y0 + side, x0 : x0 + side]
    need = max(min_frac * side * side, toyworld.MIN_VISIBLE * (side / H) ** 2)
    ids, counts = np.unique(crop, return_counts=True)
    present = [
        toyworld.CLASSES[i] for i, n in zip(ids, counts) if i != toyworld.IGNORE and n >= need
    ]
    stuff = [c for c in present if c in toyworld.STUFF] or ["the background"]
    caption = toyworld._caption(rng, [c for c in present if c in toyworld.THINGS], stuff)
    return scene.image[y0 : y0 + side, x0 : x0 + side], caption


@torch.no_grad()
def _similarities(model, tokenizer, scenes, size: int) -> np.ndarray:
    """(scenes, classes) cosine of each scene's image embedding to "a photo of a {c}."."""
    model.eval()
    device = next(model.parameters()).device
    text = model.encode_text(
        tokenizer([f"a photo of a {c}." for c in toyworld.CLASSES]).to(device), normalize=True
    )
    sims = []
    for i in range(0, len(scenes), 128):
        img = model.encode_image(_images(scenes[i : i + 128], size).to(device), normalize=True)
        sims.append((img @ text.T).cpu())
    model.train()
    return torch.cat(sims).numpy()


def _recall(sim: np.ndarray, scenes) -> float:
    hits = total = 0
    for s, row in zip(scenes, sim):
        present = {toyworld.CLASSES.index(c) for c in s.classes}
        top = np.argsort(-row, kind="stable")[: len(present)]
        hits += len(present & set(top.tolist()))
        total += len(present)
    return hits / total


def _ap(sim: np.ndarray, scenes) -> dict[str, float]:
    return {
        c: average_precision(sim[:, j], np.array([c in s.classes for s in scenes]))
        for j, c in enumerate(toyworld.CLASSES)
    }


def presence_recall(model, tokenizer, scenes, size: int) -> float:
    """Mean over scenes of |top-k classes by image-text similarity & present| / k."""
    return _recall(_similarities(model, tokenizer, scenes, size), scenes)


def presence_ap(model, tokenizer, scenes, size: int) -> dict[str, float]:
    """Per class: average precision of ranking the scenes by global image-text
    similarity ("a photo of a {c}.") for "does the scene contain c". A class the
    teacher never learned scores its base rate (its share of scenes)."""
    return _ap(_similarities(model, tokenizer, scenes, size), scenes)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking by ``scores`` (descending) for boolean ``positive``:
    the mean, over the positives, of the precision at each one's rank (0 without any)."""
    y = np.asarray(positive, bool)[np.argsort(-np.asarray(scores), kind="stable")]
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    return float(precision[y].sum() / max(y.sum(), 1))


def measure(model, tokenizer, size: int) -> dict:
    """Held-out report: recall@k and stuff / things mAP (toy seed HELDOUT_SEED, 500)."""
    heldout = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(500)]
    sim = _similarities(model, tokenizer, heldout, size)  # one pass for both measures
    ap = _ap(sim, heldout)
    base = {c: float(np.mean([c in s.classes for s in heldout])) for c in toyworld.CLASSES}
    mean = lambda names, d: round(float(np.mean([d[c] for c in names])), 4)  # noqa: E731
    return {
        "presence_recall_at_k": _recall(sim, heldout),
        "stuff_map": mean(toyworld.STUFF, ap),
        "things_map": mean(toyworld.THINGS, ap),
        "things_base_rate": mean(toyworld.THINGS, base),
        "heldout": f"toyworld seed {HELDOUT_SEED}, 500 scenes",
    }


def pretrain(
    config: Path,
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    pool: int,
    seed: int,
    crop_prob: float = 0.0,
    device: str = "cpu",
    log_every: int = 50,
) -> dict:
    import open_clip

    torch.manual_seed(seed)
    open_clip.add_model_config(config)
    name = config.stem
    model = open_clip.create_model(name).to(device)
    tokenizer = open_clip.get_tokenizer(name)
    size = model.visual.image_size[0]
    t0 = time.time()
    scenes = [toyworld.make_scene(TRAIN_SEED + seed, i) for i in range(pool)]
    print(f"generated {pool} training scenes in {time.time() - t0:.0f} s", flush=True)
    tokens = tokenizer([s.caption for s in scenes])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=lr
    )
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randperm(pool, generator=gen)[:batch]
        crop = torch.rand(batch, generator=gen) < crop_prob
        images, tok = [scenes[i].image for i in idx.tolist()], tokens[idx].clone()
        rows = torch.nonzero(crop).flatten().tolist()
        if rows:
            crops = [region_crop(scenes[int(idx[j])], rng) for j in rows]
            for j, (img, _) in zip(rows, crops):
                images[j] = img
            tok[rows] = tokenizer([caption for _, caption in crops])
        x = _images(images, size)
        flip = torch.rand(batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        x, tok = x.to(device), tok.to(device)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        # captions can repeat within a batch: count identical captions as positives
        same = (tok[:, None, :] == tok[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
        )
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{(time.time() - t0) / (step + 1):.2f} s/step",
                flush=True,
            )
    minutes = round((time.time() - t0) / 60, 1)
    held = measure(model, tokenizer, size)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"state_dict": {k: v.cpu() for k, v in sd.items()}}, out / f"{name}.pt")
    if config.resolve() != (out / f"{name}.json").resolve():
        shutil.copy(config, out / f"{name}.json")
    report = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "pool": pool,
        "seed": seed,
        "crop_prob": crop_prob,
        "device": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
        "minutes": minutes,
        **held,
    }
    (out / f"{name}.report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.pretrain_teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--out", type=Path, default=REPO / "train" / "assets")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pool", type=int, default=6000, help="training scenes generated up front")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--crop-prob",
        type=float,
        default=0.0,
        help="share of samples replaced by a region crop captioned with what it shows",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--measure",
        metavar="CHECKPOINT",
        help="only measure a trained teacher (with --config): recall@k, stuff/things mAP",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch < 2 or args.pool < args.batch:
        print("error: need --steps >= 1, --batch >= 2 and --pool >= --batch", file=sys.stderr)
        return 2
    if args.measure:
        from train.clip_loader import load_clip

        model, name, _, _ = load_clip(model_config=args.config, pretrained=args.measure)
        import open_clip

        held = measure(model, open_clip.get_tokenizer(name), model.visual.image_size[0])
        print(json.dumps(held, indent=2))
        return 0
    if not 0.0 <= args.crop_prob <= 1.0:
        print("error: --crop-prob must be within [0, 1]", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = pretrain(
        args.config,
        args.out,
        args.steps,
        args.batch,
        args.lr,
        args.pool,
        args.seed,
        crop_prob=args.crop_prob,
        device=device,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
