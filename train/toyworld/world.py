"""Toy world: procedural scenes with exact per-pixel class masks and captions.

The offline stand-in for real images + a real CLIP (README: toy world). 6 "stuff" classes
(large textured regions) and 14 "thing" classes (shapes with their own colours and
textures); each scene has 1-2 stuff regions and 1-4 things with occlusion, scale and
position variety, and lighting / colour-cast / noise variation. Colour alone names no
class: every class draws its colours from several hues, and hues are shared across
classes (blue sky / water / fish / car, white snow / clouds / ring, ...). As with real
objects, each thing has a typical hue (trees are usually green, cars usually black:
``TYPICAL_COLOUR``, drawn 75 % of the time), and things are drawn large enough to be
seen at the teacher's resolution (radius 12-28 % of the scene's side); still a
nearest-mean-colour classifier names under 60 % of the classes it sees (a test). This
is world version 3 (``WORLD_VERSION``, written into ``split.json``); versions 1-2
(every hue equally likely, smaller things) are in git history with their figures.

Fixed split (``UNKNOWN_CLASSES``): 5 of the 20 classes are "unknown", never named to
CLIP-S4 training; the teacher still learns them from its captions.

    python -m train.toyworld --seed 0 --count 500 --out data/toy_val

writes a VOC-style folder: JPEGImages/NNNNNN.jpg, SegmentationClass/NNNNNN.png
(palette PNG, index = class id, 255 = ignore), classes.txt, captions.jsonl,
split.json (known / unknown class names), ImageSets/Segmentation/all.txt.
Scenes are deterministic by (seed, index).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORLD_VERSION = 3  # written into split.json; figures name the world they were made on
STUFF = ("sky", "grass", "water", "sand", "brick wall", "snow")
THINGS = (
    "ball",
    "box",
    "star",
    "heart",
    "pyramid",
    "ring",
    "cross",
    "moon",
    "tree",
    "house",
    "fish",
    "flower",
    "car",
    "kite",
)
CLASSES = STUFF + THINGS
UNKNOWN_CLASSES = ("snow", "star", "fish", "car", "kite")
KNOWN_CLASSES = tuple(c for c in CLASSES if c not in UNKNOWN_CLASSES)
IGNORE = 255
MIN_VISIBLE = 24  # pixels; a thing less visible than this is set to ignore and not captioned

# hue families (RGB, 0-255) shared across classes so that no colour names a class
PALETTE = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (235, 210, 50),
    "green": (60, 160, 60),
    "teal": (40, 150, 150),
    "blue": (50, 90, 200),
    "purple": (130, 60, 170),
    "pink": (235, 130, 170),
    "white": (235, 235, 235),
    "gray": (130, 130, 130),
    "brown": (130, 85, 45),
    "black": (35, 35, 40),
    "lime": (160, 215, 50),
    "magenta": (215, 50, 190),
}
# Each thing's typical hue, drawn with probability TYPICAL_P, else any hue of its
# THING_COLOURS list. No two things share a typical hue. (World v3; v1 had none: there a
# small CLIP could not learn the things from captions, BENCHMARKS.md, issue 12.)
TYPICAL_COLOUR = {
    "ball": "red",
    "box": "brown",
    "star": "yellow",
    "heart": "pink",
    "pyramid": "orange",
    "ring": "teal",
    "cross": "white",
    "moon": "gray",
    "tree": "green",
    "house": "purple",
    "fish": "blue",
    "flower": "magenta",
    "car": "black",
    "kite": "lime",
}
TYPICAL_P = 0.75
THING_COLOURS = {
    "ball": ("red", "blue", "yellow", "green", "orange", "purple", "white"),
    "box": ("brown", "orange", "gray", "blue", "red"),
    "star": ("yellow", "orange", "white", "red", "blue"),
    "heart": ("red", "pink", "purple", "orange"),
    "pyramid": ("yellow", "brown", "orange", "gray"),
    "ring": ("yellow", "gray", "white", "teal", "purple"),
    "cross": ("red", "white", "green", "blue"),
    "moon": ("yellow", "white", "orange", "gray"),
    "tree": ("green", "teal", "orange", "yellow"),
    "house": ("white", "red", "yellow", "blue", "brown"),
    "fish": ("orange", "blue", "gray", "yellow", "teal"),
    "flower": ("pink", "yellow", "white", "purple", "red"),
    "car": ("red", "blue", "black", "white", "green", "yellow"),
    "kite": ("red", "yellow", "blue", "green", "purple", "orange"),
}


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8 class ids, IGNORE = 255
    caption: str
    classes: list[str]  # classes visible in the scene (= named in the caption)


# ------------------------------------------------------------------ textures
def _noise(rng, h, w, scale):
    """Smooth value noise in [0, 1]: random grid bilinearly upsampled."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    g = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray((g * 255).astype(np.uint8)).resize((w + scale, h + scale), Image.BILINEAR)
    oy, ox = rng.integers(0, scale + 1, 2)
    return np.asarray(img, np.float32)[oy : oy + h, ox : ox + w] / 255.0


def _jitter(rng, rgb, amount=30):
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _stuff_texture(rng, name, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "sky":
        top, bottom = _jitter(rng, (70, 120, 220), 25), _jitter(rng, (170, 205, 240), 20)
        if rng.random() < 0.25:  # dusk sky: orange / purple, shares hues with things
            top, bottom = _jitter(rng, (120, 70, 150), 25), _jitter(rng, (240, 150, 90), 25)
        t = (yy / h)[..., None]
        img = top * (1 - t) + bottom * t
        clouds = np.clip((_noise(rng, h, w, 24) - 0.55) * 4, 0, 1)[..., None]
        return img * (1 - clouds) + _jitter(rng, (245, 245, 250), 8) * clouds
    if name == "grass":
        base = _jitter(rng, rng.choice([(70, 150, 50), (110, 160, 60), (50, 110, 40)]), 20)
        strokes = _noise(rng, h, 4 * w, 3)[:, ::4] * 0.6 + _noise(rng, h, w, 12) * 0.4
        return base * (0.6 + 0.7 * strokes[..., None])
    if name == "water":
        base = _jitter(rng, rng.choice([(40, 90, 170), (40, 130, 150), (60, 80, 120)]), 20)
        f, ph = rng.uniform(0.3, 0.7), rng.uniform(0, 6.3)
        waves = 0.5 + 0.5 * np.sin(f * yy + 2.0 * np.sin(0.08 * xx + ph))
        glint = (_noise(rng, h, w, 6) > 0.8).astype(np.float32) * 0.35
        return base * (0.75 + 0.35 * waves[..., None]) + 255 * glint[..., None] * 0.5
    if name == "sand":
        base = _jitter(rng, (220, 195, 140), 20)
        grain = rng.random((h, w)).astype(np.float32)
        ripple = 0.5 + 0.5 * np.sin(0.35 * (xx + yy) + 3 * _noise(rng, h, w, 16))
        return base * (0.8 + 0.12 * grain[..., None] + 0.12 * ripple[..., None])
    if name == "brick wall":
        bh, bw = int(rng.integers(8, 14)), int(rng.integers(18, 30))
        mortar = _jitter(rng, (200, 195, 185), 15)
        brick = _jitter(rng, rng.choice([(160, 60, 45), (130, 70, 50), (170, 100, 70)]), 15)
        row = (yy // bh).astype(int)
        col = ((xx + (row % 2) * bw / 2) // bw).astype(int)
        shade = np.random.default_rng(int(rng.integers(1 << 30))).random(
            (row.max() + 1, col.max() + 2)
        )
        img = brick * (0.75 + 0.4 * shade[row, col])[..., None]
        line = ((yy % bh) < 2) | (((xx + (row % 2) * bw / 2) % bw) < 2)
        return np.where(line[..., None], mortar, img)
    if name == "snow":
        base = _jitter(rng, (240, 243, 250), 8)
        shade = _noise(rng, h, w, 20)
        img = base * (0.82 + 0.18 * shade[..., None]) - np.array([20, 10, 0]) * (
            1 - shade[..., None]
        )
        speck = rng.random((h, w)) < 0.01
        return np.where(speck[..., None], 255.0, img)
    raise ValueError(name)


# ------------------------------------------------------------------ things
def _star(cx, cy, r, n=5, inner=0.45, rot=0.0):
    pts = []
    for i in range(2 * n):
        a = rot + np.pi * i / n - np.pi / 2
        rr = r if i % 2 == 0 else r * inner
        pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
    return pts


def _draw_thing(rng, name, h, w):
    """Return (shape mask (h, w) bool, colour image (h, w, 3) float) of one thing."""
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    r = float(rng.uniform(0.12, 0.28) * min(h, w))
    cx, cy = float(rng.uniform(r * 0.6, w - r * 0.6)), float(rng.uniform(r * 0.6, h - r * 0.6))
    rot = float(rng.uniform(0, 2 * np.pi))
    extra = Image.new("L", (w, h), 0)  # a second part coloured differently
    e = ImageDraw.Draw(extra)
    if name == "ball":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif name == "box":
        s = r * rng.uniform(0.7, 1.0)
        d.rectangle([cx - s, cy - s * rng.uniform(0.6, 1.0), cx + s, cy + s], fill=1)
    elif name == "star":
        d.polygon(_star(cx, cy, r, rot=rot), fill=1)
    elif name == "heart":
        q = r * 0.55
        d.ellipse([cx - 2 * q, cy - 1.5 * q, cx, cy + 0.5 * q], fill=1)
        d.ellipse([cx, cy - 1.5 * q, cx + 2 * q, cy + 0.5 * q], fill=1)
        d.polygon(
            [(cx - 1.95 * q, cy - 0.2 * q), (cx + 1.95 * q, cy - 0.2 * q), (cx, cy + 2 * q)], fill=1
        )
    elif name == "pyramid":
        d.polygon([(cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r), (cx, cy - r)], fill=1)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        t = r * rng.uniform(0.45, 0.65)
        d.ellipse([cx - t, cy - t, cx + t, cy + t], fill=0)
    elif name == "cross":
        t = r * 0.33
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=1)
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=1)
    elif name == "moon":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        o = r * rng.uniform(0.35, 0.6) * rng.choice([-1, 1])
        d.ellipse([cx - r + o, cy - r - 0.2 * abs(o), cx + r + o, cy + r - 0.2 * abs(o)], fill=0)
    elif name == "tree":
        e.rectangle([cx - 0.15 * r, cy + 0.2 * r, cx + 0.15 * r, cy + r], fill=1)
        if rng.random() < 0.5:
            d.polygon(
                [(cx - 0.7 * r, cy + 0.4 * r), (cx + 0.7 * r, cy + 0.4 * r), (cx, cy - r)], fill=1
            )
        else:
            d.ellipse([cx - 0.65 * r, cy - r, cx + 0.65 * r, cy + 0.35 * r], fill=1)
    elif name == "house":
        d.rectangle([cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + r], fill=1)
        e.polygon(
            [(cx - 0.9 * r, cy - 0.1 * r), (cx + 0.9 * r, cy - 0.1 * r), (cx, cy - r)], fill=1
        )
        e.rectangle([cx - 0.15 * r, cy + 0.45 * r, cx + 0.15 * r, cy + r], fill=1)
    elif name == "fish":
        s = rng.choice([-1, 1])
        d.ellipse([cx - r, cy - 0.5 * r, cx + 0.6 * r, cy + 0.5 * r], fill=1)
        tail = cx + s * 0.4 * r
        d.polygon(
            [(tail, cy), (tail + s * 0.6 * r, cy - 0.45 * r), (tail + s * 0.6 * r, cy + 0.45 * r)],
            fill=1,
        )
    elif name == "flower":
        n, pr = int(rng.integers(5, 8)), 0.38 * r
        for i in range(n):
            a = rot + 2 * np.pi * i / n
            px, py = cx + 0.6 * r * np.cos(a), cy + 0.6 * r * np.sin(a)
            d.ellipse([px - pr, py - pr, px + pr, py + pr], fill=1)
        e.ellipse([cx - 0.35 * r, cy - 0.35 * r, cx + 0.35 * r, cy + 0.35 * r], fill=1)
    elif name == "car":
        d.rounded_rectangle([cx - r, cy - 0.25 * r, cx + r, cy + 0.35 * r], radius=0.15 * r, fill=1)
        d.rounded_rectangle(
            [cx - 0.55 * r, cy - 0.65 * r, cx + 0.45 * r, cy - 0.2 * r], radius=0.1 * r, fill=1
        )
        for wx in (cx - 0.55 * r, cx + 0.55 * r):
            e.ellipse([wx - 0.25 * r, cy + 0.1 * r, wx + 0.25 * r, cy + 0.6 * r], fill=1)
    elif name == "kite":
        d.polygon(
            [
                (cx, cy - r),
                (cx + 0.6 * r, cy - 0.1 * r),
                (cx, cy + 0.7 * r),
                (cx - 0.6 * r, cy - 0.1 * r),
            ],
            fill=1,
        )
        pts = [
            (cx + 0.15 * r * np.sin(3 * t), cy + 0.7 * r + t * 0.5 * r)
            for t in np.linspace(0, 1, 8)
        ]
        e.line(pts, fill=1, width=max(1, int(r * 0.08)))
    else:
        raise ValueError(name)
    shape = np.asarray(m, bool)
    part = np.asarray(extra, bool)
    colour = _thing_colour(rng, name, h, w, cx, cy, r)
    second = {
        "tree": (120, 80, 40),
        "house": (150, 60, 50),
        "flower": (230, 190, 40),
        "car": (30, 30, 30),
        "kite": (60, 60, 60),
    }.get(name)
    if second is not None:
        colour = np.where(part[..., None], _jitter(rng, second, 20), colour)
    return shape | part, colour


def _thing_colour(rng, name, h, w, cx, cy, r):
    hue = TYPICAL_COLOUR[name] if rng.random() < TYPICAL_P else rng.choice(THING_COLOURS[name])
    base = _jitter(rng, PALETTE[hue], 22)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.choice(
        ["solid", "stripes", "dots", "checker", "shade"], p=[0.35, 0.2, 0.15, 0.1, 0.2]
    )
    if kind == "stripes":
        a, f = rng.uniform(0, np.pi), rng.uniform(0.4, 1.0)
        pat = (np.sin(f * (xx * np.cos(a) + yy * np.sin(a))) > 0)[..., None]
        return np.where(pat, base, base * rng.uniform(0.45, 0.75))
    if kind == "dots":
        s = rng.integers(5, 9)
        pat = (((xx % s) - s / 2) ** 2 + ((yy % s) - s / 2) ** 2 < (s / 4) ** 2)[..., None]
        return np.where(pat, _jitter(rng, PALETTE[rng.choice(list(PALETTE))], 10), base)
    if kind == "checker":
        s = rng.integers(4, 8)
        pat = (((xx // s) + (yy // s)) % 2 == 0)[..., None]
        return np.where(pat, base, base * 0.6)
    if kind == "shade":  # spherical light from the upper left
        dist = np.sqrt((xx - cx + 0.4 * r) ** 2 + (yy - cy + 0.4 * r) ** 2) / (1.6 * r)
        return base * np.clip(1.25 - 0.7 * dist, 0.4, 1.3)[..., None]
    return np.broadcast_to(base, (h, w, 3)).astype(np.float32)


# ------------------------------------------------------------------ scenes
def _caption(rng, things: list[str], stuff: list[str]) -> str:
    art = lambda n: ("an " if n[0] in "aeiou" else "a ") + n  # noqa: E731
    items = [art(t) for t in rng.permutation(things)] if things else []
    if len(items) > 1:
        obj = ", ".join(items[:-1]) + " and " + items[-1]
    else:
        obj = items[0] if items else ""
    the = {"brick wall": "a brick wall", "the background": "the background"}
    where = " and ".join(the.get(s, "the " + s) for s in rng.permutation(stuff))
    templates = [
        "a photo of {o} with {s}.",
        "{o} in front of {s}.",
        "a picture of {o} and {s}.",
        "{s} with {o}.",
        "a scene with {o} on {s}.",
    ]
    if not things:
        return rng.choice(["a photo of {s}.", "a picture of {s}.", "{s}."]).format(s=where)
    return rng.choice(templates).format(o=obj, s=where)


def make_scene(seed: int, index: int, size: int = 128) -> Scene:
    """One scene, deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    h = w = size
    img = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    stuff = list(rng.choice(STUFF, size=int(rng.integers(1, 3)), replace=False))
    if len(stuff) == 1:
        img[:] = _stuff_texture(rng, stuff[0], h, w)
        mask[:] = CLASSES.index(stuff[0])
    else:
        xx = np.arange(w, dtype=np.float32)
        y0 = rng.uniform(0.3, 0.7) * h
        edge = y0 + rng.uniform(2, 0.12 * h) * np.sin(
            rng.uniform(0.02, 0.1) * xx + rng.uniform(0, 6.3)
        )
        below = np.arange(h)[:, None] >= edge[None, :]
        for name, region in zip(stuff, (~below, below)):
            img[region] = _stuff_texture(rng, name, h, w)[region]
            mask[region] = CLASSES.index(name)
    for name in rng.choice(THINGS, size=int(rng.integers(1, 5)), replace=False):
        shape, colour = _draw_thing(rng, str(name), h, w)
        img[shape] = colour[shape]
        mask[shape] = CLASSES.index(str(name))
    # lighting, colour cast, noise
    img = img * rng.uniform(0.65, 1.25) * rng.uniform(0.88, 1.12, 3)
    img = (img - 128) * rng.uniform(0.8, 1.2) + 128 + rng.normal(0, rng.uniform(2, 9), img.shape)
    present = []
    for cid in np.unique(mask):
        if (mask == cid).sum() < MIN_VISIBLE:
            mask[mask == cid] = IGNORE
        else:
            present.append(CLASSES[cid])
    things = [c for c in present if c in THINGS]
    caption = _caption(rng, things, [c for c in present if c in STUFF] or ["the background"])
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(image, mask, caption, present)


def voc_palette() -> list[int]:
    from clips4rt.visualize import palette

    pal = np.zeros((256, 3), np.uint8)
    pal[: len(CLASSES)] = palette(len(CLASSES))
    pal[IGNORE] = (255, 255, 255)
    return pal.reshape(-1).tolist()


def write_dataset(out: str | Path, seed: int, count: int, size: int = 128) -> Path:
    """Write ``count`` scenes as a VOC-style folder (see the module docstring)."""
    if count <= 0:
        raise ValueError(f"--count must be positive, got {count}")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    out = Path(out)
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output folder {out}: {e}") from e
    pal = voc_palette()
    ids, captions = [], []
    for i in range(count):
        scene = make_scene(seed, i, size)
        name = f"{seed:04d}_{i:06d}"
        Image.fromarray(scene.image).save(out / "JPEGImages" / f"{name}.jpg", quality=92)
        m = Image.fromarray(scene.mask, mode="P")
        m.putpalette(pal)
        m.save(out / "SegmentationClass" / f"{name}.png")
        ids.append(name)
        captions.append({"image": name, "caption": scene.caption, "classes": scene.classes})
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "ImageSets/Segmentation/all.txt").write_text("\n".join(ids) + "\n")
    with open(out / "captions.jsonl", "w") as f:
        for c in captions:
            f.write(json.dumps(c) + "\n")
    split = {
        "known": list(KNOWN_CLASSES),
        "unknown": list(UNKNOWN_CLASSES),
        "seed": seed,
        "count": count,
        "size": size,
        "world_version": WORLD_VERSION,
    }
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.toyworld",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        write_dataset(args.out, args.seed, args.count, args.size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.count} scenes to {args.out} (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
