"""Training configuration: one typed object, JSON presets, ``--key=value`` overrides.

    python -m train --preset toy --steps=300 --out=runs/toy_short

A preset may start from another: ``"extends": "toy"`` (a preset name, or a ``.json``
path relative to the preset's file) takes that preset's values, then its own over them.
Unknown keys, unknown presets and values of the wrong type are errors that name the fix.
The resolved config is saved in every checkpoint; ``model_hash`` covers the fields
that shape the model and the losses, so ``--resume`` and the export refuse a checkpoint
from another configuration; ``--resume`` also refuses one whose recipe (every field but
``RESUME_FREE``) differs, naming the overrides that restore it.

The defaults are the ``toy`` preset (a test keeps them equal). File paths (teacher
config and checkpoint, class list) are used as given when they exist from the working
directory, else relative to the checkout (``train.resolve_path``), so the presets'
``train/assets/...`` work from any directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "presets"


@dataclass
class TrainConfig:
    # data: "toy" = the toy-world generator, else a folder of unlabeled images
    data: str = "toy"
    toy_seed: int = 1000
    toy_pool: int = 4000
    workers: int = 2  # DataLoader processes decoding a folder or shards (0 = in the loop)
    prefetch: int = 4  # batches each worker prepares ahead
    image_size: int = 96  # side of each augmented view
    teacher_size: int = 128  # side of the full image the teacher sees
    jitter: float = 1.0  # strength of the views' colour jitter (0 = none)
    # teacher (any open_clip CLIP: name + pretrained tag, or config JSON + checkpoint)
    clip: str | None = None
    model_config: str | None = "train/assets/toy-teacher.json"
    pretrained: str | None = "train/assets/toy-teacher.pt"
    teacher_dense: str = "sclip"
    teacher_targets: str = "both"  # dense | crops | both (train/method/crops.py)
    crop_weight: float = 1.0  # with both: the crop embedding's weight against the dense mean
    teacher_window: int = 0  # dense targets in sliding windows of this many px (0 = whole)
    teacher_center: float = 1.0  # strength of the teacher-logit centring (0 = off, 1 = full)
    known_classes: str = "toy"  # "toy" or a text file, one class name a line
    templates: str = "simple"  # simple | imagenet
    # student
    backbone: str = "resnet10t"
    stride: int = 8
    decoder_width: int = 128
    decoder_norm: str = "bn"  # bn | gn
    top_stride: int = 16  # deepest CNN stage the FPN uses: 32, or 16 (no last stage)
    imagenet_init: bool = False
    # losses
    segments: int = 8  # k-means segments per view
    concentration: float = 10.0
    contrast_negatives: str = "batch"  # batch | image: whose segments a pixel is contrasted with
    false_negatives: str = "keep"  # keep | drop | positive: negatives the teacher calls alike
    false_negative_cos: float = 0.8  # teacher-target cosine above which two segments agree
    w_contrastive: float = 1.0
    w_embedding: float = 1.0
    w_semantic: float = 1.0
    w_pixel: float = 0.0  # pixel-level distillation of the teacher's dense features (0 = off)
    unknown_prototypes: int = 8  # 0 switches them off
    unknown_threshold: float = 0.5
    unknown_refresh: int = 25
    unknown_space: str = "image"  # image | text (train/method/prototypes.py)
    student_scale: float = 50.0
    teacher_scale: float = 50.0
    # optimisation
    steps: int = 500
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 30
    clip_grad: float = 1.0
    seed: int = 0
    # output
    out: str = "runs/toy"
    log_every: int = 10
    ckpt_every: int = 100
    keep: int = 3
    # validation during training (a VOC-style folder, as train.evaluate reads)
    val: str | None = None
    val_every: int = 0  # steps between validations; 0 = with every checkpoint
    tensorboard: bool = False  # also log to <out>/tensorboard (needs the tensorboard package)

    MODEL_FIELDS = (
        "clip",
        "model_config",
        "pretrained",
        "teacher_dense",
        "known_classes",
        "templates",
        "backbone",
        "stride",
        "decoder_width",
        "decoder_norm",
        "segments",
        "unknown_prototypes",
        "image_size",
    )
    # fields added to MODEL_FIELDS later enter the hash only when set away from the value
    # training had before they existed, so older checkpoints keep their hash (--resume).
    # (top_stride is compared with its current default 16: it was 32 when the field came,
    # so a top-32 checkpoint of that time and a top-16 one hash alike; left as it was.)
    LATER_MODEL_FIELDS = {"top_stride": 16, "teacher_targets": "dense", "teacher_center": 0.0,
                          "teacher_window": 0}  # fmt: skip

    def model_hash(self) -> str:
        d = {k: getattr(self, k) for k in self.MODEL_FIELDS}
        for k, before in self.LATER_MODEL_FIELDS.items():
            if getattr(self, k) != before:
                d[k] = getattr(self, k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # what a resumed run may set otherwise than the run it continues: where it writes and
    # how often, its validation, and how long it runs (--steps: the cosine stretches from
    # the step it resumes at). Every other field is the run's recipe.
    RESUME_FREE = frozenset({"out", "workers", "prefetch", "log_every", "ckpt_every", "keep",
                             "val", "val_every", "tensorboard", "steps"})  # fmt: skip

    def recipe_changes(self, saved) -> list[str]:
        """The recipe fields that ``saved`` (a checkpoint's ``config``) sets otherwise,
        each as the override that restores it (``--concentration=10.0``). Fields outside
        ``saved`` (a checkpoint older than the field) and ``RESUME_FREE`` are not
        compared; a ``saved`` that is not a dict compares nothing."""
        if not isinstance(saved, dict):
            return []
        out = []
        for f in fields(self):
            if f.name in self.RESUME_FREE or f.name not in saved:
                continue
            was = saved[f.name]
            plain = isinstance(was, (str, int, float, bool, type(None)))  # a checkpoint may
            if not plain or was != getattr(self, f.name):  # hold tensors or lists anywhere
                text = str(was) if len(str(was)) <= 200 else str(was)[:200] + "..."
                out.append(shlex.quote(f"--{f.name}={text}"))
        return out


def _coerce(name: str, typ, text: str):
    typ = str(typ)
    if text.lower() in ("none", "null") and "None" in typ:
        return None
    try:
        if typ.startswith("int"):
            return int(text)
        if typ.startswith("float"):
            return float(text)
        if typ.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
    except ValueError:
        raise ValueError(f"--{name}={text!r}: expected {typ}") from None
    return text


# fields with a closed set of values (the others are checked where they are used)
CHOICES = {
    "top_stride": (16, 32),
    "unknown_space": ("image", "text"),
    "teacher_targets": ("dense", "crops", "both"),
    "contrast_negatives": ("batch", "image"),
    "false_negatives": ("keep", "drop", "positive"),
}


HELP = {
    "data": '"toy" = the toy-world generator, else images: a folder (image files and/or .tar '
    "shards, recursive), a glob or a brace pattern (shards/train-{0000..0099}.tar)",
    "workers": "DataLoader worker processes decoding --data (0 = in the training process; "
    "more than the CPUs warns)",
    "prefetch": "batches each worker prepares ahead",
    "val": "VOC-style folder (JPEGImages/, SegmentationClass/, classes.txt): validation mIoU "
    "all/known/unknown in metrics.csv, the best checkpoint kept as best.pt",
    "val_every": "steps between validations (0 = with every checkpoint)",
    "tensorboard": "also write TensorBoard logs to <out>/tensorboard",
    "toy_seed": "seed of the toy world's training scenes",
    "toy_pool": "toy scenes generated up front and sampled from",
    "image_size": "side of each augmented view the student sees (px)",
    "teacher_size": "side of the full image the teacher sees (px)",
    "jitter": "strength of the views' colour jitter: brightness, contrast and saturation "
    "x(1 +- 0.3 jitter), hue +- 0.05 jitter turns (0 = none; the teacher sees the "
    "image unjittered)",
    "teacher_window": "the teacher's dense features in sliding windows of this many px at "
    "half stride (e.g. its native 224 at teacher_size 448); 0 = one pass",
    "clip": "teacher: open_clip model name (e.g. ViT-B-16); or --model_config",
    "model_config": "teacher: open_clip-style config JSON (with --pretrained)",
    "pretrained": "teacher weights: a pretrained tag (openai, ...) or a checkpoint path",
    "teacher_dense": "training-free dense mode of the teacher's maps",
    "teacher_targets": "the teacher's target for a segment: dense (its dense features "
    "averaged over the segment), crops (its global embedding of the segment cut out) or "
    "both (their mean, the crop weighted by --crop_weight)",
    "crop_weight": "with teacher_targets both: the target is the unit mean of the dense "
    "features and this many times the crop's embedding (1 = equal weights)",
    "teacher_center": "share of the running mean of the teacher's class logits subtracted "
    "before its softmax in the semantic consistency (DINO's centring; 0 = off, 1 = full)",
    "known_classes": '"toy" or a text file, one class name a line (the known vocabulary)',
    "templates": "prompt templates for the known classes",
    "backbone": "student CNN (timm name, e.g. resnet18, resnet10t)",
    "stride": "output stride of the student's embeddings",
    "decoder_width": "channels of the student's FPN decoder",
    "decoder_norm": "normalisation in the decoder (bn, or gn for tiny batches)",
    "top_stride": "deepest CNN stage the FPN uses: 32, or 16 (drops the last stage)",
    "imagenet_init": "start the backbone from timm's ImageNet weights (needs them cached)",
    "segments": "k-means segments per view for the pixel-segment contrast",
    "concentration": "temperature (inverse) of the pixel-segment contrastive loss",
    "contrast_negatives": "a pixel's negatives: every segment of the batch (batch; same-class "
    "segments of other images included), or its own image's segments (image)",
    "false_negatives": "a pixel's negatives whose teacher target agrees with its own "
    "segment's (cosine above --false_negative_cos): kept (CLIP-S4), dropped from the "
    "contrast, or counted as positives (both: torch loss, no Triton kernel)",
    "false_negative_cos": "teacher-target cosine above which two segments count as alike",
    "w_contrastive": "weight of the pixel-segment contrastive loss",
    "w_embedding": "weight of the embedding consistency with the teacher",
    "w_semantic": "weight of the semantic consistency (known + unknown prototypes)",
    "w_pixel": "weight of a pixel-level pull to the teacher's dense features (needs "
    "teacher_targets dense or both)",
    "unknown_prototypes": "learned prototypes for unknown classes (0 switches them off)",
    "unknown_threshold": "cosine under which a pixel is unexplained by the known classes",
    "unknown_refresh": "steps between re-clustering the unknown prototypes",
    "unknown_space": "where unknown prototypes live: image or text embedding space",
    "student_scale": "logit scale of the student's class softmax",
    "teacher_scale": "logit scale of the teacher's class softmax",
    "steps": "training steps",
    "batch": "images per step (over all processes)",
    "lr": "AdamW learning rate (warmup, then cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear warmup steps",
    "clip_grad": "gradient norm clip (0 = off)",
    "seed": "seed of everything random (views, segments, prototypes)",
    "out": "run folder: checkpoints, metrics.csv, run.json",
    "log_every": "steps between rows of metrics.csv",
    "ckpt_every": "steps between checkpoints",
    "keep": "checkpoints kept (0 = all)",
}


def config_help() -> str:
    """One line per config field: ``--key=default [range or choices]  help``."""
    lines = ["config fields (--key=value; a preset sets some of them):"]
    for f in fields(TrainConfig):
        extra = ""
        if f.name in CHOICES:
            extra = " {" + ",".join(map(str, CHOICES[f.name])) + "}"
        elif f.name in RANGES:
            extra = " [{}, {}]".format(*RANGES[f.name])
        lines.append(f"  --{f.name}={f.default}{extra}\n      {HELP.get(f.name, '')}")
    return "\n".join(lines)


MAX_PRESET_BYTES = 1 << 20  # a preset is a few hundred bytes of JSON
MAX_EXTENDS = 8  # "extends" chain length


def _read_preset(preset: str, known, base: Path | None = None, seen: tuple = ()) -> dict:
    """A preset's values: its JSON object, over those of the preset it names in
    ``"extends"`` (a preset name, or a ``.json`` path relative to the file that names
    it), applied first. Bounded: the file's size, the chain's length, no cycles."""
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"preset must be a name or a .json path, got {preset!r}")
    if preset.endswith(".json"):
        path = Path(preset).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
    elif re.fullmatch(r"[A-Za-z0-9_-]+", preset):
        path = PRESETS / f"{preset}.json"
    else:
        raise ValueError(f"preset {preset!r}: a preset name (letters, digits, - and _) or a "
                         "path ending in .json")  # fmt: skip
    if not path.is_file():
        names = sorted(p.stem for p in PRESETS.glob("*.json"))
        raise ValueError(f"preset {preset!r} not found; available: {names} or a .json path")
    key = path.resolve()
    if key in seen:
        raise ValueError(f"{path}: \"extends\" goes round in a circle ({len(seen)} presets)")
    if len(seen) >= MAX_EXTENDS:
        raise ValueError(f"{path}: \"extends\" chain longer than {MAX_EXTENDS} presets")
    with open(path, "rb") as f:
        raw = f.read(MAX_PRESET_BYTES + 1)
    if len(raw) > MAX_PRESET_BYTES:
        raise ValueError(f"{path}: a preset is at most {MAX_PRESET_BYTES} bytes")
    try:
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset is a JSON object of config keys")
    bad = sorted(set(values) - set(known) - {"extends"})
    if bad:
        raise ValueError(f"{path}: unknown config keys {bad}")
    parent = values.pop("extends", None)
    if parent is None:
        return values
    return {**_read_preset(parent, known, path.parent, (*seen, key)), **values}


def load_config(preset: str | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Preset JSON (``train/method/presets/<name>.json`` or a path) + ``key=value``
    overrides."""
    known = {f.name: f for f in fields(TrainConfig)}
    values: dict = {}
    if preset is not None:
        values = _read_preset(preset, known)
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not sep:
            raise ValueError(f"override {item!r} must look like --key=value")
        if key not in known:
            close = [k for k in known if key in k or k in key][:5]
            raise ValueError(
                f"unknown config key {key!r}" + (f"; did you mean {close}?" if close else "")
            )
        values[key] = _coerce(key, known[key].type, text)
    cfg = TrainConfig(**values)
    for key, allowed in CHOICES.items():  # checked here, before a teacher is loaded
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"--{key}={getattr(cfg, key)!r}: choose one of {list(allowed)}")
    for key, (lo, hi) in RANGES.items():
        v = getattr(cfg, key)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"--{key}={v!r}: must be within [{lo}, {hi}]")
    return cfg


# Numeric fields and their accepted ranges (checked at parse time: --steps=0 or
# --log_every=0 used to fail with ZeroDivisionError after the teacher had loaded,
# --steps=-5 to exit 0 having trained nothing).
RANGES = {
    "toy_pool": (1, 10**7),
    "image_size": (16, 4096),
    "teacher_size": (16, 4096),
    "jitter": (0.0, 3.0),
    "teacher_window": (0, 4096),
    "stride": (1, 64),
    "decoder_width": (1, 8192),
    "segments": (2, 1024),
    "concentration": (1e-6, 1e6),
    "false_negative_cos": (-1.0, 1.0),
    "w_contrastive": (0.0, 1e6),
    "w_embedding": (0.0, 1e6),
    "w_semantic": (0.0, 1e6),
    "w_pixel": (0.0, 1e6),
    "crop_weight": (0.0, 1e6),
    "unknown_prototypes": (0, 4096),
    "unknown_threshold": (-1.0, 1.0),
    "teacher_center": (0.0, 1.0),
    "unknown_refresh": (1, 10**9),
    "student_scale": (1e-6, 1e4),
    "teacher_scale": (1e-6, 1e4),
    "steps": (1, 10**9),
    "batch": (1, 10**6),
    "lr": (0.0, 10.0),
    "weight_decay": (0.0, 10.0),
    "warmup": (0, 10**9),
    "clip_grad": (0.0, 1e9),
    "log_every": (1, 10**9),
    "ckpt_every": (1, 10**9),
    "keep": (0, 10**6),  # 0 = keep every checkpoint
    "workers": (0, 1024),
    "prefetch": (1, 1024),
    "val_every": (0, 10**9),
}
