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
    """uint8 scenes -> float (B, 3, size, size), normalised like CLIP."""
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def presence_recall(model, tokenizer, scenes, size: int) -> float:
    """Mean over scenes of |top-k classes by image-text similarity & present| / k."""
    model.eval()
    text = model.encode_text(
        tokenizer([f"a photo of a {c}." for c in toyworld.CLASSES]), normalize=True
    )
    hits = total = 0
    for i in range(0, len(scenes), 128):
        batch = scenes[i : i + 128]
        img = model.encode_image(_images(batch, size), normalize=True)
        order = (img @ text.T).argsort(dim=1, descending=True)
        for s, o in zip(batch, order):
            present = {toyworld.CLASSES.index(c) for c in s.classes}
            hits += len(present & set(o[: len(present)].tolist()))
            total += len(present)
    model.train()
    return hits / total


def pretrain(
    config: Path,
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    pool: int,
    seed: int,
    log_every: int = 50,
) -> dict:
    import open_clip

    torch.manual_seed(seed)
    open_clip.add_model_config(config)
    name = config.stem
    model = open_clip.create_model(name)
    tokenizer = open_clip.get_tokenizer(name)
    size = model.visual.image_size[0]
    t0 = time.time()
    scenes = [toyworld.make_scene(TRAIN_SEED + seed, i) for i in range(pool)]
    heldout = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(500)]
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
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randperm(pool, generator=gen)[:batch]
        x = _images([scenes[i] for i in idx], size)
        flip = torch.rand(batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens[idx], normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        # captions can repeat within a batch: count identical captions as positives
        same = (tokens[idx][:, None, :] == tokens[idx][None, :, :]).all(-1).float()
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
    recall = presence_recall(model, tokenizer, heldout, size)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd}, out / f"{name}.pt")
    if config.resolve() != (out / f"{name}.json").resolve():
        shutil.copy(config, out / f"{name}.json")
    report = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "pool": pool,
        "seed": seed,
        "minutes": round((time.time() - t0) / 60, 1),
        "presence_recall_at_k": recall,
        "heldout": f"toyworld seed {HELDOUT_SEED}, 500 scenes",
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
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch < 2 or args.pool < args.batch:
        print("error: need --steps >= 1, --batch >= 2 and --pool >= --batch", file=sys.stderr)
        return 2
    report = pretrain(args.config, args.out, args.steps, args.batch, args.lr, args.pool, args.seed)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
