"""``clips4rt export`` (and ``python -m train.export`` in a checkout): the command line
over ``clips4rt.export.graphs`` (export a CLIP or a CLIP-S4 checkpoint, optionally int8
with ``clips4rt.export.quantize``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clips4rt.export import graphs as G
from clips4rt.export.graphs import TEMPLATE_SETS, TOLERANCE, export_dense_clip, export_student


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=G.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--clip", help="open_clip model name, e.g. ViT-B-16")
    src.add_argument("--model-config", help="open_clip-style model config JSON")
    src.add_argument("--checkpoint", help="a CLIP-S4 training checkpoint (python -m train)")
    p.add_argument("--pretrained", help="pretrained tag (e.g. openai) or checkpoint path")
    p.add_argument("--dense", default="maskclip", help="maskclip | clearclip | sclip")
    p.add_argument("-o", "--out", required=True, help="output image graph, e.g. model.onnx")
    p.add_argument("--input-size", type=int, help="default short side (default 2x native)")
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        help="prompt templates (default: imagenet; a checkpoint's own setting)",
    )
    p.add_argument("--threshold", type=float, default=0.0, help="background probability rule")
    p.add_argument("--logit-scale", type=float, help="softmax temperature written into the "
                   "bundle (default: the model's own, 100 for CLIP; the official SCLIP/ClearCLIP "
                   "protocols use 40-65 with their thresholds)")  # fmt: skip
    p.add_argument("--negatives", help="the negative vocabulary, comma-separated names, or "
                   "'none' (default: a generic stuff list for --clip/--model-config, the known "
                   "classes for --checkpoint)")  # fmt: skip
    p.add_argument("--window", type=int, help="default sliding window, pixels of the working "
                   "size (0 = whole image; default: the native size for --clip/--model-config, "
                   "whole image for --checkpoint)")  # fmt: skip
    p.add_argument("--window-stride", type=int, default=0,
                   help="pixels between windows (default: half the window)")  # fmt: skip
    p.add_argument("--background", default="", help="comma-separated background class names")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="float16 compute (GPU deployment)")
    prec.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store weights as float16, compute in float32 (half-size files for CPU/edge)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="quantize the image graph to int8 (static, QDQ, per-channel; CPU/edge and "
        "TensorRT; needs --calibration) and the text graph (as --int8-text)",
    )
    p.add_argument(
        "--int8-text",
        action="store_true",
        help="quantize only the text graph to int8 (dynamic, no calibration; new classes "
        "~3x faster on CPUs; its embeddings are checked against the float graph's); "
        "combines with --fp16-weights",
    )
    p.add_argument("--calibration", help="folder of images like the deployment's (for --int8)")
    p.add_argument(
        "--calibration-count", type=int, default=64, help="calibration images used (--int8)"
    )
    return p


def _int8(args, out: Path) -> dict:
    """Quantize the float bundle just written at ``out`` (clips4rt.export.quantize)."""
    import clips4rt
    from clips4rt.export.quantize import calibration_frames, quantize_image_graph

    seg = clips4rt.Segmenter(out, providers=["CPUExecutionProvider"])
    frames = calibration_frames(args.calibration, args.calibration_count, seg)
    del seg
    return quantize_image_graph(out, frames)


def _negatives(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _export(args, out: Path, background: tuple[str, ...], resolve):
    """The float bundle at ``out``: (BundleInfo, parity errors)."""
    from clips4rt.export.clip_loader import load_clip

    common = dict(input_size=args.input_size, fp16=args.fp16, threshold=args.threshold,
                  background=background, fp16_weights=args.fp16_weights,
                  logit_scale=args.logit_scale, window_stride=args.window_stride,
                  negatives=_negatives(args.negatives),
                  int8_text=args.int8 or args.int8_text)  # fmt: skip
    if args.checkpoint:
        return export_student(args.checkpoint, out, templates=args.templates,
                              window=args.window or 0, resolve=resolve, **common)  # fmt: skip
    model, name, mean, std = load_clip(args.clip, args.pretrained, args.model_config)
    return export_dense_clip(
        model, name, args.pretrained, mean, std, args.dense, out,
        templates=args.templates or "imagenet",
        window="native" if args.window is None else args.window, **common,
    )  # fmt: skip


def main(
    argv: list[str] | None = None, prog: str = "clips4rt export", resolve=G.expand_path
) -> int:
    """``resolve``: how a checkpoint's recorded teacher paths become files (see
    ``export_student``)."""
    import shutil
    import tempfile

    from clips4rt.export.dense_clip import DENSE_MODES
    from clips4rt.export.quantize import calibration_files

    args = _parser(prog).parse_args(argv)
    if args.dense not in DENSE_MODES:
        print(
            f"error: unknown --dense {args.dense!r}; choose one of {tuple(DENSE_MODES)}",
            file=sys.stderr,
        )
        return 2
    background = tuple(c.strip() for c in args.background.split(",") if c.strip())
    if args.int8 and (args.fp16 or args.fp16_weights):
        print(
            "error: --int8 quantizes the float32 image graph to 8-bit integers; --fp16 / "
            "--fp16-weights make a float16 one: choose one",
            file=sys.stderr,
        )
        return 2
    if args.int8_text and args.fp16:
        print("error: --int8-text quantizes the float32 text graph; --fp16 makes a float16 "
              "one (GPU): choose one", file=sys.stderr)  # fmt: skip
        return 2
    if args.int8 and not args.calibration:
        print("error: --int8 needs --calibration DIR (images like the deployment's)",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out).expanduser()
    stage = None
    try:
        if not args.int8:
            info, errs = _export(args, out, background, resolve)
            return _report(out, info, errs)
        calibration_files(args.calibration, args.calibration_count)  # before any export
        # float export and quantization in a hidden folder beside out: a failure leaves
        # no float bundle under the int8 bundle's name
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.stem}.int8-"))
        info, errs = _export(args, stage / out.name, background, resolve)
        rep = _int8(args, stage / out.name)
        os.replace(stage / info.text_model, out.with_name(info.text_model))
        os.replace(stage / out.name, out)
        _report(out, info, errs)
        return _int8_report(rep)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _int8_report(rep: dict) -> int:
    print(
        f"int8 image graph: pixel-embedding cosine to float on {rep['heldout_images']} held-out "
        f"images: mean {rep['cosine_mean']:.4f}, 1st percentile {rep['cosine_p1']:.4f} (bound "
        f"{rep['bound']['cosine_mean']} / {rep['bound']['cosine_p1']}); "
        f"{len(rep['float_layers'])} layers kept in float; calibrated on "
        f"{rep['calibration_images']} images"
    )
    return 0


def _report(out, info, errs) -> int:
    for k, v in errs.items():
        tol = TOLERANCE[
            "fp16-weights" if info.provenance.get("weights") == "float16" else info.precision
        ]
        print(f"parity {k}: relative error {v:.2e} (tolerance {tol:g})")
    t8 = info.provenance.get("text_int8")
    if t8:
        print(
            f"int8 text graph: embedding cosine to float on {t8['prompts']} prompts: min "
            f"{t8['cosine_min']:.4f} (bound {t8['bound']}), mean {t8['cosine_mean']:.4f}; "
            f"class prototypes min {t8['prototype_cosine_min']:.4f}; demo-scene labels over "
            f"{t8['names']} names: {100 * t8['label_agreement']:.1f} % unchanged"
        )
    print(
        f"wrote {out} and {info.text_model} ({info.kind}, D={info.embed_dim}, "
        f"stride {info.stride}, input size {info.input_size})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
