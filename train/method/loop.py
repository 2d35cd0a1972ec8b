"""The CLIP-S4 training loop (``python -m train``): read it top to bottom.

One step: full images -> frozen dense teacher features; two augmented views ->
student pixel embeddings; k-means segments per view; pixel-segment contrastive loss
(positives: own segment + the other view's segment at the same image point),
embedding consistency (segment level) and semantic consistency over known + unknown
prototypes. AdamW, warmup + cosine, gradient clipping, bf16 autocast on CUDA,
checkpoints written atomically, ``--resume`` continues bit for bit on the CPU.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train import checkpoint as C
from train import resolve_path
from train.method import augment as A
from train.method import distributed as D
from train.method.config import TrainConfig
from train.method.losses import contrastive_loss, embedding_consistency, semantic_consistency
from train.schedule import warmup_cosine
from train.method.segments import segment_means, spherical_kmeans


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
        from clips4rt.prompts import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
        from train.method.prototypes import text_prototypes
        from train.models.clip_loader import load_clip
        from train.models.dense_clip import DenseCLIPImage

        model, self.name, mean, std = load_clip(
            cfg.clip, resolve_path(cfg.pretrained), resolve_path(cfg.model_config)
        )
        self.model = model.to(device).eval().requires_grad_(False)
        self.dense = DenseCLIPImage(model.visual, cfg.teacher_dense, mean, std).to(device)
        self.mean, self.std = mean, std
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
        """uint8 (B, S, S, 3) -> unit dense features (B, D, S/p, S/p)."""
        return self.dense(images)


def _views(images, boxes, jitter, cfg, device, mean, std):
    """Augmented views (B, 3, s, s) of uint8 full images, normalised with ``mean``/``std``
    (0-1 RGB): the teacher's statistics, which the export writes into the bundle, so
    the deployed student sees its pixels as in training."""
    x = images.permute(0, 3, 1, 2).float().div(255)
    v = A.jitter(A.warp(x, A.grids(boxes, cfg.image_size, cfg.image_size)), jitter)
    mean, std = (torch.tensor(t, dtype=v.dtype).view(1, 3, 1, 1) for t in (mean, std))
    return ((v - mean) / std).to(device)


def step_losses(student, teacher, unknown, images, cfg, gen, device, rank=0, world=1) -> dict:
    """All losses of one step (a dict of scalar tensors, 'total' included).

    ``images`` is the global batch; this rank embeds its slice. Every random draw is
    made for the whole batch, segments are gathered from all ranks (negatives span the
    global batch) and sums are divided by global counts times ``world``, so that DDP's
    gradient average equals one process's gradient on the whole batch."""
    Bg = images.shape[0]
    b = Bg // world
    mine = slice(rank * b, (rank + 1) * b)
    aug = A.AugmentConfig(size=cfg.image_size)
    boxes = [A.sample_boxes(Bg, aug, gen)[mine] for _ in range(2)]
    jits = [{k: t[mine] for k, t in A.jitter_params(Bg, aug, gen).items()} for _ in range(2)]
    seeds = [torch.rand(Bg, generator=gen)[mine] for _ in range(2)]
    local = images[mine]
    t_full = teacher.features(local.to(device))  # (b, D, ht, wt), no grad
    k = cfg.segments
    zs, v_views, t_views, own = [], [], [], []
    offset = 0
    for bx, jp, seed in zip(boxes, jits, seeds):
        z = student(_views(local, bx, jp, cfg, device, teacher.mean, teacher.std))  # (b, D, h, w)
        h, w = z.shape[-2:]
        t = F.normalize(A.warp(t_full, A.grids(bx, h, w).to(device)), dim=1)
        zf, tf = z.flatten(2).transpose(1, 2).float(), t.flatten(2).transpose(1, 2).float()
        first = (seed * h * w).long().clamp(max=h * w - 1)
        lab = spherical_kmeans(zf.detach(), k, first=first)[0].to(device)
        v, counts = segment_means(zf, lab, k)
        tm, _ = segment_means(tf, lab, k)
        valid = counts.reshape(-1) > 0
        remap = torch.cumsum(valid.long(), 0) - 1 + offset  # segment id within this rank
        ids = lab + torch.arange(b, device=device)[:, None] * k
        own.append(remap[ids])
        offset += int(valid.sum())
        zs.append(zf)
        v_views.append(v.reshape(-1, v.shape[-1])[valid])
        t_views.append(tm.reshape(-1, tm.shape[-1])[valid])
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
    pos = torch.where(pos >= 0, pos + base, pos)
    V = D.gather_rows(V_local, grad=True)  # every rank's segments: negatives of the batch
    Z = torch.cat([z.reshape(-1, z.shape[-1]) for z in zs])
    n_pix = D.all_sum((pos >= 0).any(1).sum().float()).clamp(min=1)
    n_seg = D.all_sum(torch.tensor(float(len(V_local)), device=device)).clamp(min=1)
    zero = Z.new_zeros(())
    out = {}
    out["contrastive"] = (
        world * contrastive_loss(Z, V, pos, cfg.concentration, reduction="sum") / n_pix
        if cfg.w_contrastive
        else zero
    )
    out["embedding"] = (
        world * embedding_consistency(V_local, T_local, reduction="sum") / n_seg
        if cfg.w_embedding
        else zero
    )
    if cfg.w_semantic:
        protos = teacher.known
        if unknown is not None and len(unknown.protos):
            protos = torch.cat([protos, unknown.prototypes(protos)])
        out["semantic"] = (
            world
            * semantic_consistency(
                V_local, T_local, protos, cfg.student_scale, cfg.teacher_scale, reduction="sum"
            )
            / n_seg
        )
    else:
        out["semantic"] = zero
    if unknown is not None:  # view-major order, as one process would see the batch
        T_all = torch.cat([D.gather_rows(t) for t in t_views])
        unknown.observe(T_all, teacher.known, cfg.teacher_scale)
    out["total"] = (
        cfg.w_contrastive * out["contrastive"]
        + cfg.w_embedding * out["embedding"]
        + cfg.w_semantic * out["semantic"]
    )
    return out


# ---------------------------------------------------------------- checkpoints
def _rng_state(gen: torch.Generator) -> dict:
    return {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": C.numpy_rng_state(),
        "python": random.getstate(),
    }


def _set_rng_state(gen: torch.Generator, s: dict) -> None:
    gen.set_state(s["gen"])
    torch.set_rng_state(s["torch"])
    C.set_numpy_rng_state(s["numpy"])
    random.setstate(s["python"])


# A run's folder: step_*.pt checkpoints, metrics.csv and run.json, which names the
# run (a random id, also stored in each checkpoint) and lists its checkpoints. Rotation
# and --resume touch only the files listed there; a new run into a folder that holds
# another one is refused unless --overwrite moves the old files aside.
RUN_FILE = "run.json"


def _run_state(out: Path) -> dict | None:
    try:
        state = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise C.CheckpointError(f"{out / RUN_FILE} is unreadable ({e}); fix or remove it") from None
    if not (isinstance(state.get("run_id"), str) and isinstance(state.get("checkpoints"), list)):
        raise C.CheckpointError(f"{out / RUN_FILE} is not a clips4rt run file")
    return state


def _write_run_state(out: Path, state: dict) -> None:
    tmp = out / (RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / RUN_FILE)


def _run_files(out: Path) -> list[Path]:
    names = ("metrics.csv", RUN_FILE)
    return sorted(p for p in out.glob("*") if p.name in names or p.match("step_*.pt"))


def prepare_out(out: Path, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse to start a new run over another run's files, or move them aside."""
    if resume or not out.exists():
        return
    old = _run_files(out)
    if not old:
        return
    if not overwrite:
        raise ValueError(
            f"--out {out} holds another run ({len(old)} files: "
            f"{', '.join(p.name for p in old[:4])}{', ...' if len(old) > 4 else ''}): continue "
            "it with --resume, start over with --overwrite (the old files move to "
            f"{out}/previous-<time>/), or choose another --out"
        )
    if main:
        aside = out / time.strftime("previous-%Y%m%d-%H%M%S")
        n = 0
        while aside.exists():
            n += 1
            aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
        aside.mkdir()
        for p in old:
            os.replace(p, aside / p.name)


def save_checkpoint(path: Path, state: dict, keep: int) -> None:
    """Write atomically (temp file, fsync, rename), list it in run.json, then keep the
    newest ``keep`` of this run's checkpoints (0 = all); other files are not touched."""
    C.save(state, path)
    out = path.parent
    run = _run_state(out) or {"run_id": state["run_id"], "checkpoints": []}
    names = [n for n in run["checkpoints"] if n != path.name] + [path.name]
    names.sort()
    drop = names[:-keep] if keep > 0 else []
    run["checkpoints"] = [n for n in names if n not in drop]
    _write_run_state(out, run)
    for name in drop:
        (out / name).unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path | None:
    run = _run_state(out)
    ckpts = (
        [out / n for n in run["checkpoints"] if (out / n).exists()]
        if run
        else sorted(out.glob("step_*.pt"))
    )
    return ckpts[-1] if ckpts else None


def _load_resume(out: Path) -> tuple[Path, dict]:
    """The newest readable checkpoint of the run in ``out``: a truncated or corrupt
    newer one (a crash or full disk while writing) is skipped with a warning; an unsafe
    one, or one of another run, stops."""
    run = _run_state(out)
    if run is None:  # a folder written before run.json existed
        ckpts = sorted(out.glob("step_*.pt"), reverse=True)
    else:
        ckpts = [out / n for n in reversed(run["checkpoints"]) if (out / n).exists()]
    if not ckpts:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}; drop --resume to start fresh")
    for path in ckpts:
        try:
            ckpt = C.load(path)
        except C.CheckpointError as e:
            if not e.corrupt:
                raise
            warnings.warn(f"--resume: skipping {e}", RuntimeWarning, stacklevel=3)
            continue
        if run is not None and ckpt.get("run_id") not in (None, run["run_id"]):
            raise C.CheckpointError(
                f"--resume: {path} belongs to run {ckpt.get('run_id')}, but {out / RUN_FILE} "
                f"is run {run['run_id']}: the folder mixes two runs; move one away"
            )
        return path, ckpt
    raise C.CheckpointError(
        f"--resume: no readable checkpoint in {out} ({len(ckpts)} corrupt); drop --resume "
        "to start fresh",
        corrupt=True,
    )


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics rows after ``step`` (steps replayed after a resume are logged again)."""
    if not path.exists():
        return
    rows = path.read_text().splitlines(keepends=True)
    keep = rows[:1] + [
        r for r in rows[1:] if r.split(",", 1)[0].isdigit() and int(r.split(",", 1)[0]) <= step
    ]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


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
    from tqdm import tqdm

    from train.method.data import make_source
    from train.method.prototypes import UnknownPrototypes
    from train.models.student import build_student

    rank, world, device = D.setup()
    if cfg.batch % world:
        raise ValueError(f"--batch={cfg.batch} must be a multiple of the {world} processes")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    prepare_out(out, resume, overwrite, rank == 0)  # before the teacher loads
    D.barrier()
    out.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(cfg, device)
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
    source = make_source(cfg.data, cfg.teacher_size, cfg.toy_seed, cfg.toy_pool)
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
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup, cfg.steps)
    step = 0
    if resume:
        ckpt_path, ckpt = _load_resume(out)
        if ckpt["model_hash"] != cfg.model_hash():
            raise ValueError(
                f"{ckpt_path} was written by another configuration (model fields "
                f"differ: saved {ckpt['model_hash']}, now {cfg.model_hash()}); resume "
                "with the same preset and overrides, or use a new --out"
            )
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if unknown is not None:
            unknown.load_state_dict(ckpt["unknown"])
        _set_rng_state(gen, ckpt["rng"])
        step = ckpt["step"]
        run_id = ckpt.get("run_id") or uuid.uuid4().hex[:16]
    else:
        run_id = uuid.uuid4().hex[:16]
    main = rank == 0  # only rank 0 writes
    log = None
    if main:
        log_path = out / "metrics.csv"
        _trim_metrics(log_path, step)
        new_log = not log_path.exists() or step == 0
        log = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(log)
        if new_log:
            writer.writerow(
                ["step", "total", "contrastive", "embedding", "semantic", "lr", "s_per_step"]
            )
    model.train()
    last = None
    done = 0
    bar = tqdm(
        total=cfg.steps, initial=step, desc="train", unit="step", disable=None if main else True
    )
    t0 = time.time()
    try:
        while step < cfg.steps and (stop_after is None or done < stop_after):
            images = source.batch(cfg.batch, gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = step_losses(model, teacher, unknown, images, cfg, gen, device, rank, world)
            if D.all_sum(torch.isfinite(losses["total"].detach()).float()) < world:
                parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                raise RuntimeError(
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
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                keys = ("total", "contrastive", "embedding", "semantic")
                vals = [float(D.all_sum(losses[k].detach())) / world for k in keys]
                if main:
                    writer.writerow(
                        [step]
                        + [f"{v:.5f}" for v in vals]
                        + [f"{sched.get_last_lr()[0]:.3e}", f"{(time.time() - t0) / done:.3f}"]
                    )
                    log.flush()
            if (
                step % cfg.ckpt_every == 0
                or step == cfg.steps
                or (stop_after and done == stop_after)
            ):
                last = out / f"step_{step:07d}.pt"
                D.barrier()
                if main:
                    save_checkpoint(
                        last,
                        {
                            "model": student.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                            "step": step,
                            "run_id": run_id,
                            "rng": _rng_state(gen),
                            "unknown": unknown.state_dict() if unknown is not None else None,
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
                        },
                        cfg.keep,
                    )
                D.barrier()
    finally:
        bar.close()
        if log is not None:
            log.close()
    if source.skipped:
        print(f"skipped {source.skipped} unreadable image files")
    return last or latest_checkpoint(out)
