"""Pretrain the toy-world CLIP teacher: a small open_clip CLIP trained on toy scenes and
their captions, from random weights, on the CPU.

    python -m train.toyworld.teacher --out train/assets --stop-after 2000  # the committed one

Real open_clip model code and BPE tokenizer; the model config is an open_clip JSON
(``train/configs/toy-teacher.json``). Writes ``<out>/toy-teacher.pt`` (open_clip
state dict, float16 to stay small) and ``<out>/toy-teacher.json`` (the config), which
load through the same path as real weights:

    python -m train.export --model-config train/assets/toy-teacher.json \\
        --pretrained train/assets/toy-teacher.pt --dense sclip -o toy.onnx

The recipe (the defaults): SigLIP's sigmoid loss (``--loss sigmoid``, the config's
``init_logit_bias``) with several positives per image: a caption is a positive of
every image in the batch that shows all it names. Half the captions are replaced by
one naming a single class the image shows (``--single-p``: the alt text of one object,
as web photos have), half the images by region crops captioned with what they show
(``--crop-prob``), and 16 never-seen scenes enter the pool each step (``--refresh``).
CLIP's softmax loss (``--loss softmax``) on whole-scene captions, the recipe before,
left the 14 things unlearnt (BENCHMARKS.md, issue 12).

Reports, on held-out scenes: zero-shot "which classes are present" recall@k (k = the
number of classes present), zero-shot presence AP for stuff and things against the
things' base rate, and the things AP of a linear probe on the image embeddings (does
the image encoder see things at all?). ``--measure CKPT`` reports on any checkpoint;
``--measure-every N`` reports and checkpoints during a run (continue with ``--init``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from clips4rt.export.clip_loader import preprocess_stats
from train import ASSETS, CONFIGS
from train.schedule import warmup_cosine
from train.toyworld import world as toyworld
from train.toyworld.measure import HELDOUT_SEED, image_batch, measure

DEFAULT_CONFIG = CONFIGS / "toy-teacher.json"
TRAIN_SEED = 1000  # scene seed of training; held-out: measure.HELDOUT_SEED


class Sample(NamedTuple):
    """One training image and its caption: what the caption names and what the image
    shows (class-name sets; a caption is a positive of every image showing all it names)."""

    image: np.ndarray  # (h, w, 3) uint8
    caption: str
    named: frozenset
    shown: frozenset


def region_crop(scene, rng: np.random.Generator, min_frac: float = 0.02) -> Sample:
    """A square crop of ``scene`` and a caption naming only what the crop shows.

    Half the time the crop is centred on one of the scene's things, 1.5-3x its extent
    (close-ups, like single-object web photos), else a random box of 35-100% of the side.
    A class is named when it covers at least ``min_frac`` of the crop and
    ``toyworld.MIN_VISIBLE`` scaled pixels."""
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
    image = scene.image[y0 : y0 + side, x0 : x0 + side]
    return Sample(image, caption, frozenset(present), frozenset(present))


SINGLE_FORMS = ("a photo of {}.", "a picture of {}.", "{}.", "there is {} in the picture.",
                "a photo with {}.")  # fmt: skip


def single_caption(rng: np.random.Generator, shown) -> tuple[str, frozenset]:
    """A caption naming one class of ``shown`` (the alt text of one object in a photo),
    and the set it names."""
    c = sorted(shown)[rng.integers(len(shown))]
    if c in toyworld.STUFF:
        noun = "a brick wall" if c == "brick wall" else "the " + c
    else:
        noun = ("an " if c[0] in "aeiou" else "a ") + c
    return SINGLE_FORMS[rng.integers(len(SINGLE_FORMS))].format(noun), frozenset([c])


def sigmoid_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss with several positives: every (image, caption) pair of the batch is a
    binary decision, positive where the image shows all the caption names. ``logits``
    (B, B) = scale * cosine + bias; summed over captions, averaged over images."""
    sign = torch.where(positive, 1.0, -1.0)
    return -F.logsigmoid(sign * logits).sum() / len(logits)


def softmax_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; identical captions within the batch count as positives."""
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
    )


def _save_teacher(model, config: Path, out: Path, name: str, file: str) -> None:
    """open_clip state dict in float16 (small), written atomically, + its config JSON."""
    from train.checkpoint import save

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save({"state_dict": {k: v.detach().cpu() for k, v in sd.items()}}, out / file)
    if config.resolve() != (out / f"{name}.json").resolve():
        shutil.copy(config, out / f"{name}.json")


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
    refresh: int = 0,
    measure_every: int = 0,
    workers: int = 0,
    heldout_count: int = 500,
    init: Path | None = None,
    loss: str = "sigmoid",
    single_p: float = 0.5,
    stop_after: int | None = None,
) -> dict:
    """Train a teacher with a ``steps``-long schedule; ``stop_after`` ends it early (the
    learning rate still follows the ``steps`` schedule). Writes the checkpoint, config
    and report into ``out``; returns the report."""
    import open_clip

    end = min(stop_after or steps, steps)

    torch.manual_seed(seed)
    open_clip.add_model_config(config)
    name = config.stem
    model = open_clip.create_model(name).to(device)
    if init is not None:  # continue a teacher (weights only: optimiser and schedule restart)
        from train.checkpoint import CheckpointError
        from train.checkpoint import load as load_checkpoint

        state = load_checkpoint(init, "teacher checkpoint").get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"--init {init}: no state_dict (not a teacher checkpoint)")
        try:
            model.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            )
        except RuntimeError as e:
            raise ValueError(f"--init {init} does not fit --config {config}: {e}") from None
    if loss == "sigmoid" and getattr(model, "logit_bias", None) is None:
        raise ValueError(
            f'--loss sigmoid needs a learnable bias: add "init_logit_bias": -10 to {config} '
            "(open_clip's SigLIP setting), or use --loss softmax"
        )
    tokenizer = open_clip.get_tokenizer(name)
    size = model.visual.image_size[0]
    stats = preprocess_stats(model)
    t0 = time.time()
    make = functools.partial(toyworld.make_scene, TRAIN_SEED + seed)  # scene i of the stream
    procs = multiprocessing.get_context("spawn").Pool(workers) if workers else None
    mapper = procs.map if procs else lambda f, xs: list(map(f, xs))
    scenes = mapper(make, range(pool))
    print(f"generated {pool} training scenes in {time.time() - t0:.0f} s", flush=True)
    # the next step's fresh scenes are made by the workers while this step trains
    ahead = lambda start: (  # noqa: E731
        procs.map_async(make, range(start, start + refresh)) if procs and refresh else None
    )
    tokens = tokenizer([s.caption for s in scenes])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=lr
    )
    sched = warmup_cosine(opt, steps // 20, steps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    heldout = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(heldout_count)]
    fresh = pool  # index of the next never-seen training scene
    pending = ahead(fresh)
    model.train()
    t0 = time.time()
    for step in range(end):
        if refresh and step:  # replace `refresh` random pool scenes with new ones
            slots = torch.randperm(pool, generator=gen)[:refresh]
            new = pending.get() if pending else mapper(make, range(fresh, fresh + refresh))
            for slot, scene in zip(slots.tolist(), new):
                scenes[slot] = scene
            tokens[slots] = tokenizer([scene.caption for scene in new])
            fresh += refresh
            pending = ahead(fresh) if step + 1 < end else None
        idx = torch.randperm(pool, generator=gen)[:batch]
        crop = torch.rand(batch, generator=gen) < crop_prob
        images, tok = [scenes[i].image for i in idx.tolist()], tokens[idx].clone()
        shown = [frozenset(scenes[i].classes) for i in idx.tolist()]
        named = list(shown)  # a scene's caption names all it shows
        rows = torch.nonzero(crop).flatten().tolist()
        if rows:
            crops = [region_crop(scenes[int(idx[j])], rng) for j in rows]
            for j, c in zip(rows, crops):
                images[j], named[j], shown[j] = c.image, c.named, c.shown
            tok[rows] = tokenizer([c.caption for c in crops])
        singles = [j for j in range(batch) if shown[j] and rng.random() < single_p]
        if singles:  # some captions name one object of the image (alt text)
            made = [single_caption(rng, shown[j]) for j in singles]
            tok[singles] = tokenizer([m[0] for m in made])
            for j, m in zip(singles, made):
                named[j] = m[1]
        x = image_batch(images, size, *stats)
        flip = torch.rand(batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        x, tok = x.to(device), tok.to(device)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        if loss == "sigmoid":
            positive = torch.tensor([[n <= s for n in named] for s in shown], device=device)
            value = sigmoid_loss(logits + model.logit_bias, positive)
        else:
            value = softmax_loss(logits, tok)
        if not torch.isfinite(value):
            raise RuntimeError(f"loss became {value.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == end - 1:
            print(
                f"step {step:5d}  loss {value.item():.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{(time.time() - t0) / (step + 1):.2f} s/step",
                flush=True,
            )
        if measure_every and (step + 1) % measure_every == 0 and step + 1 < end:
            print(f"step {step + 1:5d}  {json.dumps(measure(model, tokenizer, size, heldout))}")
            # a checkpoint at every report: a long run stopped early (a session's end)
            # continues from it with --init
            _save_teacher(model, config, out, name, f"{name}.step{step + 1}.pt")
    if procs:
        procs.terminate()
    minutes = round((time.time() - t0) / 60, 1)
    held = measure(model, tokenizer, size, heldout)
    _save_teacher(model, config, out, name, f"{name}.pt")
    report = {
        "steps": steps,
        "stop_after": stop_after,
        "batch": batch,
        "lr": lr,
        "pool": pool,
        "refresh": refresh,
        "scenes_seen": fresh,
        "init": str(init) if init else None,
        "seed": seed,
        "crop_prob": crop_prob,
        "loss": loss,
        "single_p": single_p,
        "world_version": toyworld.WORLD_VERSION,
        "device": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
        "minutes": minutes,
        **held,
    }
    (out / f"{name}.report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.toyworld.teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--steps", type=int, default=4000, help="length of the lr schedule")
    p.add_argument(
        "--stop-after",
        type=int,
        help="stop after this many steps of the --steps schedule (the committed teacher: "
        "2000 of 4000)",
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pool", type=int, default=6000, help="training scenes generated up front")
    p.add_argument(
        "--refresh",
        type=int,
        default=16,
        help="pool scenes replaced by never-seen ones each step (0 = fixed pool; a fixed "
        "pool is memorised within a few thousand steps)",
    )
    p.add_argument(
        "--measure-every", type=int, default=0, help="held-out report every N steps (0 = end)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that generate scenes (0 = in the training process); on a GPU "
        "machine they make the next step's --refresh scenes while a step trains",
    )
    p.add_argument(
        "--heldout", type=int, default=500, help="held-out scenes in the report (toy seed 2000)"
    )
    p.add_argument(
        "--init",
        type=Path,
        help="start from this teacher checkpoint (weights only), e.g. to continue a run "
        "across sessions; pass another --seed so that new scenes are drawn",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--crop-prob",
        type=float,
        default=0.5,
        help="share of samples replaced by a region crop captioned with what it shows",
    )
    p.add_argument(
        "--loss",
        choices=("sigmoid", "softmax"),
        default="sigmoid",
        help="sigmoid: SigLIP's pairwise loss, a caption positive for every image showing "
        "all it names (needs init_logit_bias in the config); softmax: CLIP's InfoNCE",
    )
    p.add_argument(
        "--single-p",
        type=float,
        default=0.5,
        help="share of captions replaced by one naming a single class the image shows",
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
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        print("error: need 1 <= --stop-after <= --steps", file=sys.stderr)
        return 2
    if not (0 <= args.refresh <= args.pool and args.workers >= 0 and args.heldout >= 1):
        print(
            "error: need 0 <= --refresh <= --pool, --workers >= 0 and --heldout >= 1",
            file=sys.stderr,
        )
        return 2
    if args.measure:
        from clips4rt.export.clip_loader import load_clip

        model, name, _, _ = load_clip(model_config=args.config, pretrained=args.measure)
        import open_clip

        scenes = [toyworld.make_scene(HELDOUT_SEED, i) for i in range(args.heldout)]
        held = measure(model, open_clip.get_tokenizer(name), model.visual.image_size[0], scenes)
        print(json.dumps(held, indent=2))
        return 0
    if args.init is not None and not args.init.is_file():
        print(f"error: --init {args.init}: no such checkpoint", file=sys.stderr)
        return 2
    if not (0.0 <= args.crop_prob <= 1.0 and 0.0 <= args.single_p <= 1.0):
        print("error: --crop-prob and --single-p must be within [0, 1]", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
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
            refresh=args.refresh,
            measure_every=args.measure_every,
            workers=args.workers,
            heldout_count=args.heldout,
            init=args.init,
            loss=args.loss,
            single_p=args.single_p,
            stop_after=args.stop_after,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
