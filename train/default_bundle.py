"""Rebuild the artifacts embedded in ``clips4rt/``: the default toy bundle, its class
list and the demo scene behind ``clips4rt demo``.

    python -m train.default_bundle --dense sclip --input-size 96 --templates imagenet

Exports the toy teacher (``train/assets/toy-teacher.*``, see ``train.pretrain_teacher``)
as a training-free dense bundle ``clips4rt/models/toy.onnx`` (+ ``toy.text.onnx``),
writes ``clips4rt/models/toy.classes.txt`` and ``clips4rt/data/demo_scene.png``
(toy world seed 7, scene 3). The CLIP-S4 training issue replaces the model with the
trained student.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from train import toyworld
from train.clip_loader import load_clip
from train.export import export_dense_clip

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "train" / "assets"
MODELS = REPO / "clips4rt" / "models"
DEMO_SCENE = (7, 3)


def build(dense: str, input_size: int, templates: str) -> None:
    model, name, mean, std = load_clip(
        model_config=ASSETS / "toy-teacher.json", pretrained=str(ASSETS / "toy-teacher.pt")
    )
    pretrained = "train/assets/toy-teacher.pt"
    info, errs = export_dense_clip(
        model,
        name,
        pretrained,
        mean,
        std,
        dense,
        MODELS / "toy.onnx",
        input_size=input_size,
        templates=templates,
    )
    (MODELS / "toy.classes.txt").write_text("\n".join(toyworld.CLASSES) + "\n")
    scene = toyworld.make_scene(*DEMO_SCENE)
    Image.fromarray(scene.image).save(REPO / "clips4rt" / "data" / "demo_scene.png")
    for k, v in errs.items():
        print(f"parity {k}: {v:.2e}")
    print(
        f"wrote {MODELS / 'toy.onnx'} ({info.kind}, input size {info.input_size}); demo scene "
        f"classes: {scene.classes}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.default_bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dense", default="sclip")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--templates", default="imagenet", choices=("simple", "imagenet"))
    args = p.parse_args(argv)
    build(args.dense, args.input_size, args.templates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
