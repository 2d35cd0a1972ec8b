"""The CLIP-S4 training loop (``python -m train``): read it top to bottom.

One step: full images -> frozen dense teacher features; two augmented views ->
student pixel embeddings; k-means segments per view; each segment's teacher target
(``--teacher_targets``: the dense features averaged over it, the teacher's global
embedding of it cut out of the view, or both); pixel-segment contrastive loss
(positives: own segment + the other view's segment at the same image point),
embedding consistency (segment level) and semantic consistency over known + unknown
prototypes (the teacher's logits centred, ``--teacher_center``). AdamW, warmup +
cosine, gradient clipping, bf16 autocast on CUDA, checkpoints written atomically,
``--resume`` continues bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train import resolve_path
from train.kmeans import spherical_kmeans
from train.method import augment as A
from train.method import distributed as D
from train.method import run as R
from train.method.config import TrainConfig
from train.method.crops import Centering, segment_crops
from train.method.losses import (
    contrastive_loss,
    embedding_consistency,
    filtered_contrastive_loss,
    semantic_consistency,
    teacher_agreement,
)
from train.method.segments import segment_means
from train.schedule import warmup_cosine


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (a non-finite loss); the message names the fix."""


def read_classes(spec: str) -> list[str]:
    if spec == "toy":
        from train.toyworld import KNOWN_CLASSES

        return list(KNOWN_CLASSES)
    path = Path(resolve_path(spec))
    if not path.is_file():
        raise FileNotFoundError(f"known-class file not found: {spec}; set --known_classes=FILE")
    from clips4rt.prompts import check_classes

    names = [n.strip() for n in path.read_text().splitlines()]
    if any(not n for n in names):
        raise ValueError(f"{path}: empty line {names.index('') + 1}; one class name a line")
    try:
        return check_classes(names)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class Teacher:
    """Frozen open_clip CLIP: dense image features + text prototypes."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from clips4rt.export.clip_loader import load_clip
        from clips4rt.export.dense_clip import DenseCLIPImage
        from clips4rt.prompts import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
        from train.method.prototypes import text_prototypes

        model, self.name, mean, std = load_clip(
            cfg.clip, resolve_path(cfg.pretrained), resolve_path(cfg.model_config)
        )
        self.model = model.to(device).eval().requires_grad_(False)
        self.dense = DenseCLIPImage(model.visual, cfg.teacher_dense, mean, std).to(device)
        self.window = _check_teacher_window(cfg, self.dense.stride)
        self.mean, self.std = mean, std
        size = model.visual.image_size  # segment crops: the teacher's input, mid-grey fill
        self.crop_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.grey = ((0.5 - torch.tensor(mean)) / torch.tensor(std)).to(device)
        self.embed_dim = int(model.visual.output_dim)
        self.classes = read_classes(cfg.known_classes)
        templates = SIMPLE_TEMPLATES if cfg.templates == "simple" else IMAGENET_TEMPLATES
        import open_clip

        tok = open_clip.get_tokenizer(self.name)
        self.known = text_prototypes(
            lambda t: model.encode_text(t.to(device)), tok, self.classes, templates
        ).to(device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> unit dense features (B, D, S/p, S/p); with
        ``teacher_window``, the unit mean of the features of square crops of that many
        pixels at half-window stride (the last flush with the edge), as the runtime's
        sliding windows (``clips4rt.window``)."""
        if not self.window:
            return self.dense(images)
        s, w, p = images.shape[1], self.window, self.dense.stride
        starts = list(range(0, s - w + 1, w // 2))
        if starts[-1] != s - w:
            starts.append(s - w)
        out = count = None
        for y in starts:
            for x in starts:
                f = self.dense(images[:, y : y + w, x : x + w])
                if out is None:
                    out = f.new_zeros(f.shape[0], f.shape[1], s // p, s // p)
                    count = f.new_zeros(1, 1, s // p, s // p)
                out[:, :, y // p : (y + w) // p, x // p : (x + w) // p] += f
                count[:, :, y // p : (y + w) // p, x // p : (x + w) // p] += 1
        return F.normalize(out / count, dim=1)

    @torch.no_grad()
    def crops(self, views, labels, k: int, grid: tuple[int, int], context=0.0) -> torch.Tensor:
        """Unit global embeddings (M, D) of the masked crops of every non-empty segment
        (``train.method.crops``) of normalised views (B, 3, S, S)."""
        x = segment_crops(views, labels, k, grid, self.crop_size, fill=self.grey, context=context)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def _check_teacher_window(cfg: TrainConfig, patch: int) -> int:
    if cfg.w_pixel and cfg.teacher_targets == "crops":
        raise ValueError("--w_pixel pulls pixels to the teacher's dense map, which "
                         "--teacher_targets=crops does not compute: use dense or both")  # fmt: skip
    w = cfg.teacher_window
    if w and (w % (2 * patch) or not 2 * patch <= w <= cfg.teacher_size
              or cfg.teacher_size % patch):  # fmt: skip
        raise ValueError(f"--teacher_window={w}: give 0 (the whole image) or a multiple of "
                         f"{2 * patch} (twice the teacher's patch) up to --teacher_size="
                         f"{cfg.teacher_size} (itself a multiple of {patch})")  # fmt: skip
    return w


def _views(images, boxes, jitter, cfg, device, mean, std):
    """Augmented views (B, 3, s, s) of uint8 full images, normalised with ``mean``/``std``
    (0-1 RGB): the teacher's statistics, which the export writes into the bundle, so
    the deployed student sees its pixels as in training."""
    x = images.permute(0, 3, 1, 2).float().div(255)
    v = A.jitter(A.warp(x, A.grids(boxes, cfg.image_size, cfg.image_size)), jitter)
    mean, std = (torch.tensor(t, dtype=v.dtype).view(1, 3, 1, 1) for t in (mean, std))
    return ((v - mean) / std).to(device)


def _contrast(cfg: TrainConfig, z, v, pos, t, alike: list) -> torch.Tensor:
    """Summed pixel-segment contrast of pixels z against segments v (positives pos, the
    first column a pixel's own segment); t: the segments' teacher targets, which decide
    the false negatives when ``cfg.false_negatives`` is not keep (then the share of
    (pixel, segment) pairs called alike is appended to ``alike``)."""
    if cfg.false_negatives == "keep":
        return contrastive_loss(z, v, pos, cfg.concentration, reduction="sum")
    agree = teacher_agreement(t, cfg.false_negative_cos)[pos[:, 0]]  # per segment, not pixel
    alike.append(agree.float().mean())
    return filtered_contrastive_loss(z, v, pos, cfg.concentration, agree, cfg.false_negatives,
                                     reduction="sum")  # fmt: skip


def step_losses(
    student, teacher, unknown, images, cfg, gen, device, rank=0, world=1, centering=None
) -> dict:
    """All losses of one step (a dict of scalar tensors, 'total' included).

    ``images`` is this rank's slice of the global batch (rank r holds images
    [r*b, (r+1)*b)). Every random draw is made for the whole batch, segments are
    gathered from all ranks (negatives span the global batch) and sums are divided by
    global counts times ``world``, so that DDP's gradient average equals one process's
    gradient on the whole batch."""
    b = images.shape[0]
    Bg = b * world
    mine = slice(rank * b, (rank + 1) * b)
    aug = A.AugmentConfig(size=cfg.image_size).scaled(cfg.jitter)
    boxes = [A.sample_boxes(Bg, aug, gen)[mine] for _ in range(2)]
    jits = [{k: t[mine] for k, t in A.jitter_params(Bg, aug, gen).items()} for _ in range(2)]
    seeds = [torch.rand(Bg, generator=gen)[mine] for _ in range(2)]
    local = images
    crops = cfg.teacher_targets in ("crops", "both")
    dense = cfg.teacher_targets in ("dense", "both")
    t_full = teacher.features(local.to(device)) if dense else None  # (b, D, ht, wt), no grad
    k = cfg.segments
    zs, v_views, t_views, own, pix, seg_img = [], [], [], [], [], []
    offset = 0
    for bx, jp, seed in zip(boxes, jits, seeds):
        x = _views(local, bx, jp, cfg, device, teacher.mean, teacher.std)
        z = student(x)  # (b, D, h, w)
        h, w = z.shape[-2:]
        zf = z.flatten(2).transpose(1, 2).float()
        first = (seed * h * w).long().clamp(max=h * w - 1)
        lab = spherical_kmeans(zf.detach(), k, first=first)[0].to(device)
        v, counts = segment_means(zf, lab, k)
        valid = counts.reshape(-1) > 0
        tm = 0
        if dense:  # the teacher's dense features, averaged over each segment
            t = F.normalize(A.warp(t_full, A.grids(bx, h, w).to(device)), dim=1)
            tf = t.flatten(2).transpose(1, 2).float()
            if cfg.w_pixel:  # each pixel towards the teacher's dense feature at its point
                pix.append((1 - (F.normalize(zf, dim=-1) * tf).sum(-1)).sum())
            td, _ = segment_means(tf, lab, k)
            tm = td.reshape(-1, td.shape[-1])[valid]
        if crops:  # the teacher's global embedding of each segment, cut out of the view
            tc = teacher.crops(x, lab, k, (h, w))  # (segments, D)
            tm = F.normalize(tm + cfg.crop_weight * tc if dense else tc, dim=-1)
        remap = torch.cumsum(valid.long(), 0) - 1 + offset  # segment id within this rank
        ids = lab + torch.arange(b, device=device)[:, None] * k
        own.append(remap[ids])
        offset += int(valid.sum())
        zs.append(zf)
        v_views.append(v.reshape(-1, v.shape[-1])[valid])
        seg_img.append(torch.arange(b, device=device).repeat_interleave(k)[valid])
        t_views.append(tm)
    corr = [A.correspondence(boxes[0], boxes[1], h, w), A.correspondence(boxes[1], boxes[0], h, w)]
    pos = []
    for a, o in ((0, 1), (1, 0)):
        c = corr[a].to(device)
        other = torch.where(c >= 0, torch.gather(own[o], 1, c.clamp(min=0)), -1)
        pos.append(torch.stack([own[a], other], -1).reshape(-1, 2))
    V_local, T_local = torch.cat(v_views), torch.cat(t_views)
    sizes = D.gather_rows(torch.tensor([len(V_local)], device=device))
    base = int(sizes[:rank].sum())
    pos = torch.cat(pos)
    pos_local = pos
    pos = torch.where(pos >= 0, pos + base, pos)
    V = D.gather_rows(V_local, grad=True)  # every rank's segments: negatives of the batch
    Z = torch.cat([z.reshape(-1, z.shape[-1]) for z in zs])
    n_pix = D.all_sum((pos >= 0).any(1).sum().float()).clamp(min=1)
    n_seg = D.all_sum(torch.tensor(float(len(V_local)), device=device)).clamp(min=1)
    zero = Z.new_zeros(())
    out = {}
    alike: list = []  # --false_negatives: the share of pairs the teacher calls alike
    if not cfg.w_contrastive:
        out["contrastive"] = zero
    elif cfg.contrast_negatives == "image":  # a pixel against its own image's segments only
        pix_img = torch.arange(b, device=device).repeat_interleave(h * w).repeat(2)
        seg_i = torch.cat(seg_img)
        total = zero
        for i in range(b):
            si = torch.nonzero(seg_i == i)[:, 0]
            lut = torch.full((len(seg_i),), -1, dtype=torch.long, device=device)
            lut[si] = torch.arange(len(si), device=device)
            p = pos_local[pix_img == i]
            p = torch.where(p >= 0, lut[p.clamp(min=0)], -1)
            total = total + _contrast(cfg, Z[pix_img == i], V_local[si], p, T_local[si],
                                     alike)  # fmt: skip
        out["contrastive"] = world * total / n_pix
    else:  # every segment of the global batch is a negative
        T = D.gather_rows(T_local.detach()) if cfg.false_negatives != "keep" else None
        out["contrastive"] = world * _contrast(cfg, Z, V, pos, T, alike) / n_pix
    out["embedding"] = (
        world * embedding_consistency(V_local, T_local, reduction="sum") / n_seg
        if cfg.w_embedding
        else zero
    )
    if cfg.w_semantic:
        protos = teacher.known
        if unknown is not None and len(unknown.protos):
            protos = torch.cat([protos, unknown.prototypes(protos)])
        center = None
        if centering is not None:
            center = centering.get(len(protos), device)
            cos = F.normalize(T_local.detach().float(), dim=-1) @ protos.T.float()
            centering.update(D.all_sum(cos.sum(0)) / n_seg, protos)
        out["semantic"] = (
            world
            * semantic_consistency(
                V_local,
                T_local,
                protos,
                cfg.student_scale,
                cfg.teacher_scale,
                reduction="sum",
                center=center,
            )
            / n_seg
        )
    else:
        out["semantic"] = zero
    if unknown is not None:  # view-major order, as one process would see the batch
        T_all = torch.cat([D.gather_rows(t) for t in t_views])
        unknown.observe(T_all, teacher.known, cfg.teacher_scale)
    out["pixel"] = (
        world * torch.stack(pix).sum() / D.all_sum(torch.tensor(float(Z.shape[0]), device=device))
        if pix
        else zero
    )
    out["alike"] = torch.stack(alike).mean() if alike else zero
    out["total"] = (
        cfg.w_contrastive * out["contrastive"]
        + cfg.w_embedding * out["embedding"]
        + cfg.w_semantic * out["semantic"]
        + cfg.w_pixel * out["pixel"]
    )
    return out


# ---------------------------------------------------------------- the loop
def train(
    cfg: TrainConfig,
    resume: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Run (or continue) a training; returns the last checkpoint's path.

    ``resume``: continue the run in ``cfg.out``; ``overwrite``: start a new run there,
    moving another run's files aside (without either, such files are an error).
    ``stop_after``: return after this many steps of this call (tests simulate a kill)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite starts over: pick one")
    rank, world, device = D.setup()
    if cfg.batch % world:
        raise ValueError(f"--batch={cfg.batch} must be a multiple of the {world} processes")
    if cfg.data != "toy" and cfg.workers > (os.cpu_count() or 1):
        warnings.warn(f"--workers={cfg.workers} is more than the {os.cpu_count()} CPUs: "
                      "decoding will not get faster", stacklevel=2)  # fmt: skip
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = R.open_out(Path(cfg.out))  # checked before the teacher loads
    with R.RunLock(out, enabled=rank == 0):  # one run per folder
        R.prepare_out(out, resume, overwrite, rank == 0)
        D.barrier()
        return _train(cfg, out, resume, stop_after, rank, world, device, gen)


def _train(cfg, out, resume, stop_after, rank, world, device, gen) -> Path:
    """``train`` in its checked, locked folder."""
    from clips4rt.export.student import build_student
    from train.method.data import make_source
    from train.method.logger import LOSSES, MetricsLog
    from train.method.prototypes import UnknownPrototypes

    teacher = Teacher(cfg, device)
    validator = _validator(cfg, teacher) if cfg.val and rank == 0 else None
    student = build_student(
        cfg.backbone,
        teacher.embed_dim,
        teacher.model.visual,
        cfg.stride,
        cfg.decoder_width,
        cfg.imagenet_init,
        norm=cfg.decoder_norm,
        top_stride=cfg.top_stride,
    ).to(device)
    model = student
    if world > 1:  # same initial weights on every rank (same seed; DDP broadcasts too)
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            student = model
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    unknown = (
        UnknownPrototypes(
            cfg.unknown_prototypes,
            teacher.embed_dim,
            explain_threshold=cfg.unknown_threshold,
            refresh_every=cfg.unknown_refresh,
            seed=cfg.seed,
            space=cfg.unknown_space,
        )
        if cfg.unknown_prototypes
        else None
    )
    centering = Centering(strength=cfg.teacher_center) if cfg.teacher_center else None
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup, cfg.steps)
    step, best = 0, float("-inf")
    if resume:
        ckpt_path, ckpt = R.load_resume(out)
        if ckpt["model_hash"] != cfg.model_hash():
            raise ValueError(
                f"{ckpt_path} was written by another configuration (model fields "
                f"differ: saved {ckpt['model_hash']}, now {cfg.model_hash()}); resume "
                "with the same preset and overrides, or use a new --out"
            )
        changed = cfg.recipe_changes(ckpt.get("config"))
        if changed:  # a preset that moved since, or an override forgotten or added
            raise ValueError(
                f"{ckpt_path} was trained with other settings; resume it as it was with "
                f"{' '.join(changed)} (--steps and where and how often it writes may "
                "differ), or train anew in another --out"
            )
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if unknown is not None:
            unknown.load_state_dict(ckpt["unknown"])
        if centering is not None:
            centering.load_state_dict(ckpt["centering"])
        R.set_rng_state(gen, ckpt["rng"])
        step = ckpt["step"]
        best = float(ckpt.get("best_val", best))
        run_id = ckpt.get("run_id") or uuid.uuid4().hex[:16]
    else:
        run_id = uuid.uuid4().hex[:16]
    source = make_source(cfg, step, rank, world)  # the image stream resumes at `step`
    main = rank == 0  # only rank 0 writes
    log = MetricsLog(out, step, cfg.steps, cfg.batch, main, cfg.tensorboard, device)
    model.train()
    last = None
    done = 0
    try:
        while step < cfg.steps and (stop_after is None or done < stop_after):
            t_wait = time.perf_counter()
            if cfg.data == "toy":  # in memory: the global batch, sliced
                b = cfg.batch // world
                images = source.batch(cfg.batch, gen)[rank * b : (rank + 1) * b]
            else:
                images = source.next_batch(step)
            log.waited(time.perf_counter() - t_wait)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = step_losses(
                    model, teacher, unknown, images, cfg, gen, device, rank, world, centering
                )
            if D.all_sum(torch.isfinite(losses["total"].detach()).float()) < world:
                parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                raise TrainingStopped(
                    f"loss is {losses['total'].item()} at step {step} ({parts}); stopped, the "
                    f"last good checkpoint in {out} is intact. Lower --lr or --concentration."
                )
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            if cfg.clip_grad > 0:  # 0 = no clipping (a max norm of 0 would zero the step)
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            done += 1
            log.stepped()
            save = step % cfg.ckpt_every == 0 or step == cfg.steps or done == stop_after
            every = cfg.val_every or cfg.ckpt_every
            check = cfg.val is not None and (step % every == 0 or step == cfg.steps)
            val = None
            if check:
                D.barrier()
                val = validator(student, device) if main else None
                D.barrier()
            if step % cfg.log_every == 0 or step == cfg.steps or check:
                vals = {k: float(D.all_sum(losses[k].detach())) / world for k in LOSSES}
                log.row(step, vals, sched.get_last_lr()[0], val)
            improved = val is not None and val["miou"] > best
            if improved:
                best = val["miou"]
            if main and (save or improved):  # only rank 0 writes
                state = {
                    "model": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "run_id": run_id,
                    "rng": R.rng_state(gen),
                    "unknown": unknown.state_dict() if unknown is not None else None,
                    "centering": centering.state_dict() if centering is not None else None,
                    "config": cfg.to_dict(),
                    "model_hash": cfg.model_hash(),
                    "teacher": {
                        "name": teacher.name,
                        "pretrained": cfg.pretrained,
                        "embed_dim": teacher.embed_dim,
                        "mean": teacher.mean,
                        "std": teacher.std,
                        "known_classes": teacher.classes,
                    },
                    "skipped_images": source.skipped,
                    "best_val": best,
                    "val": val,
                }
            if main and improved:  # the best by validation mIoU, outside the rotation
                R.save_best(out / "best.pt", state)
            if save:  # every rank reaches this step together (improved is rank 0's alone)
                last = out / f"step_{step:07d}.pt"
                D.barrier()
                if main:
                    R.save_checkpoint(last, state, cfg.keep)
                D.barrier()
    except BaseException:  # the first error is the one to see (a full disk fails close too)
        _close_quietly(log, source)
        raise
    log.close()
    if hasattr(source, "close"):
        source.close()
    if source.skipped:
        print(f"skipped {source.skipped} unreadable image files")
    return last or R.latest_checkpoint(out)


def _close_quietly(*things) -> None:
    for t in things:
        if hasattr(t, "close"):
            with contextlib.suppress(Exception):
                t.close()


def _validator(cfg: TrainConfig, teacher: Teacher):
    """A ``train.evaluate.validate.Validator`` on ``cfg.val`` with the teacher's text
    prototypes (the run's templates) and statistics."""
    import open_clip

    from clips4rt.prompts import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
    from train.evaluate.validate import Validator
    from train.method.prototypes import text_prototypes

    templates = SIMPLE_TEMPLATES if cfg.templates == "simple" else IMAGENET_TEMPLATES
    tok = open_clip.get_tokenizer(teacher.name)
    device = teacher.known.device

    def prototypes(classes):
        m = teacher.model
        return text_prototypes(lambda t: m.encode_text(t.to(device)), tok, classes, templates)

    return Validator(resolve_path(cfg.val), prototypes, teacher.mean, teacher.std,
                     cfg.teacher_size, teacher.classes)  # fmt: skip
