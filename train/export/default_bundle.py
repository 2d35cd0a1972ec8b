"""Rebuild the artifacts embedded in ``clips4rt/``: the default toy bundle, its class
list and the demo scene behind ``clips4rt demo``.

    python -m train --preset toy                       # seed 0: the embedded student
    python -m train.export.default_bundle --checkpoint runs/toy/step_0000500.pt --force

``--force`` is needed to replace the shipped files in the package tree; ``--out DIR``
writes the bundle (``toy.onnx``, ``toy.text.onnx``, ``toy.classes.txt``) elsewhere
instead, leaving the package alone.

exports the CLIP-S4 student of the toy preset (resnet10t without its last stage, + FPN)
with the toy teacher's text graph as ``clips4rt/models/toy.onnx`` (+ ``toy.text.onnx``;
ImageNet templates, input size 192, weights stored as float16 as with ``train.export
--fp16-weights``).
``--dense sclip --input-size 96`` exports the toy teacher itself
(``train/assets/toy-teacher.*``) as a training-free dense bundle instead. Also writes
``clips4rt/models/toy.classes.txt`` and ``clips4rt/data/demo_scene.png`` (toy world
seed 7, scene 0: sand, a brick wall, a pyramid and a car). The bundle's absolute score
(``SegmentationResult.probability``) is calibrated on 200 toy scenes of seed 6000, a
seed no evaluation uses (``train.export.calibrate``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

import clips4rt
from clips4rt.export.clip_loader import load_clip
from clips4rt.export.graphs import export_dense_clip, export_student
from train import ASSETS, toyworld

RUNTIME = Path(clips4rt.__file__).resolve().parent  # the checkout's runtime package
MODELS = RUNTIME / "models"
DEMO_SCENE = (7, 0)  # sand, brick wall, a pyramid and a car (an unknown class)
CALIBRATION = (6000, 200)  # toy seed and scenes the absolute score is fitted on


def build(
    dense: str | None,
    input_size: int | None,
    templates: str,
    checkpoint: str | None = None,
    out: Path = MODELS,
) -> None:
    out = Path(out)
    if checkpoint:
        info, errs = export_student(
            checkpoint,
            out / "toy.onnx",
            input_size=input_size or 192,
            templates=templates,
            fp16_weights=True,
        )
    else:
        model, name, mean, std = load_clip(
            model_config=ASSETS / "toy-teacher.json", pretrained=str(ASSETS / "toy-teacher.pt")
        )
        info, errs = export_dense_clip(
            model,
            name,
            "train/assets/toy-teacher.pt",
            mean,
            std,
            dense or "sclip",
            out / "toy.onnx",
            input_size=input_size or 96,
            templates=templates,
            fp16_weights=True,
        )
    import tempfile

    from train.export.calibrate import calibrate

    with tempfile.TemporaryDirectory() as tmp:
        folder = toyworld.write_dataset(Path(tmp), *CALIBRATION)
        cal = calibrate(out / "toy.onnx", folder)
    print(f"score calibration: sigmoid({cal['scale']:.3f} * cos + {cal['bias']:.3f}), "
          f"ECE {cal['ece_score']:.4f}")  # fmt: skip
    (out / "toy.classes.txt").write_text("\n".join(toyworld.CLASSES) + "\n")
    scene = toyworld.make_scene(*DEMO_SCENE)
    if out.resolve() == MODELS.resolve():  # the demo scene belongs to the shipped bundle
        Image.fromarray(scene.image).save(RUNTIME / "data" / "demo_scene.png")
    for k, v in errs.items():
        print(f"parity {k}: {v:.2e}")
    print(
        f"wrote {out / 'toy.onnx'} ({info.kind}, input size {info.input_size}); demo scene "
        f"classes: {scene.classes}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.export.default_bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="CLIP-S4 checkpoint of the toy preset (the default)")
    src.add_argument("--dense", help="export the teacher training-free: maskclip|clearclip|sclip")
    p.add_argument("--input-size", type=int, help="default 192 (student) or 96 (teacher)")
    p.add_argument("--templates", default="imagenet", choices=("simple", "imagenet"))
    p.add_argument("--out", type=Path, default=MODELS, help="folder (default: the package's)")
    p.add_argument("--force", action="store_true", help="replace the shipped bundle")
    args = p.parse_args(argv)
    shipped = [f for f in ("toy.onnx", "toy.text.onnx") if (args.out / f).exists()]
    if args.out.resolve() == MODELS.resolve() and shipped and not args.force:
        print(
            f"error: this would overwrite the shipped {', '.join(shipped)} in {MODELS}; pass "
            "--force to replace the embedded model, or --out DIR to write elsewhere",
            file=sys.stderr,
        )
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        build(args.dense, args.input_size, args.templates, args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
