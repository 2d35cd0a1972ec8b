"""Can a toy-teacher image tower learn the thing classes at all? A diagnostic.

    python benchmarks/teacher_supervised.py [--config train/configs/toy-teacher.json]
        [--steps 300] [--batch 64] [--device auto]

Trains the open_clip vision tower of ``--config`` (random init) plus a linear head with
*direct* multi-label supervision (binary cross-entropy on "class c is in the scene",
the toy world's ground truth) and prints, every ``--every`` steps, the held-out
presence mAP of stuff and of things (toy seed 2000, 300 scenes) against the things'
base rate. No CLIP objective: this bounds how fast the architecture can pick up
things when the signal is as strong as it gets, so a caption-trained teacher that
never learns things can be told apart from an architecture that cannot see them
(BENCHMARKS.md, teacher section). Training scenes: a pool of ``--pool`` scenes of toy
seed 1000, sampled with replacement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import toyworld  # noqa: E402
from train.toyworld.teacher import (  # noqa: E402
    DEFAULT_CONFIG,
    HELDOUT_SEED,
    TRAIN_SEED,
    _images,
    average_precision,
    presence,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--heldout", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    import open_clip

    torch.manual_seed(args.seed)
    open_clip.add_model_config(args.config)
    visual = open_clip.create_model(args.config.stem).visual.to(device)
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    embed_dim = open_clip.get_model_config(args.config.stem)["embed_dim"]  # timm: no output_dim
    head = torch.nn.Linear(embed_dim, len(toyworld.CLASSES)).to(device)
    pool = [toyworld.make_scene(TRAIN_SEED, i) for i in range(args.pool)]
    held = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(args.heldout)]
    y, y_held = torch.from_numpy(presence(pool).astype(np.float32)), presence(held)
    x_held = _images(held, size)
    params = [*visual.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    n_stuff = len(toyworld.STUFF)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, args.pool, (args.batch,), generator=gen)
        x = _images([pool[i] for i in idx.tolist()], size).to(device)
        loss = F.binary_cross_entropy_with_logits(head(visual(x)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            visual.eval()
            with torch.no_grad():
                chunks = [x_held[i : i + 128].to(device) for i in range(0, len(held), 128)]
                s = torch.cat([head(visual(c)).cpu() for c in chunks]).numpy()
            visual.train()
            ap = [average_precision(s[:, j], y_held[:, j]) for j in range(len(toyworld.CLASSES))]
            row = {
                "step": step,
                "loss": round(loss.item(), 4),
                "stuff_map": round(float(np.mean(ap[:n_stuff])), 4),
                "things_map": round(float(np.mean(ap[n_stuff:])), 4),
                "things_base_rate": round(float(y_held[:, n_stuff:].mean()), 4),
                "seconds": round(time.time() - t0),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
