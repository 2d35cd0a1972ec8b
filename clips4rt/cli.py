"""Command line: ``clips4rt segment``, ``video``, ``demo``, ``info``, ``models``, ``export``.

clips4rt segment photo.jpg --model ViT-B-16/openai --classes "cat,dog,sofa" --out out/
clips4rt segment photo.jpg --model model.onnx --classes "cat,dog,sofa" --out out/
clips4rt video clip.mp4 --model model.onnx --classes "person,car" --out overlay.mp4
clips4rt info model.onnx
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from clips4rt.cliargs import build_parser
from clips4rt.errors import BundleError, DownloadError, ImageError, VideoError
from clips4rt.files import save_image_atomic
from clips4rt.inputs import expand, url_name


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _threshold(text: str):
    """--threshold 0.5, or per class: --threshold car=0.6,person=0.4."""
    try:
        if "=" not in text:
            return float(text)
        pairs = [part.rsplit("=", 1) for part in _split(text)]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(f"--threshold {text!r}: give a probability (0.5) or class=probability "
                         "pairs (car=0.6,person=0.4)") from None  # fmt: skip


def _summary(labels, names) -> str:
    """Each asked class's share of the pixels; classes that are absent say so."""
    counts = np.bincount(labels.ravel() + 1, minlength=len(names) + 1)
    found = [f"{c} {100 * counts[k + 1] / labels.size:.1f}%" for k, c in enumerate(names)
             if counts[k + 1]]  # fmt: skip
    missing = [c for k, c in enumerate(names) if not counts[k + 1]]
    parts = found + ([f"not found: {', '.join(missing)}"] if missing else [])
    if counts[0]:
        parts.append(f"background {100 * counts[0] / labels.size:.1f}%")
    return "; ".join(parts)


def _options(args) -> dict:
    options = {}
    if args.threshold is not None:
        options["threshold"] = _threshold(args.threshold)
    if args.no_negatives:
        options["negatives"] = False
    if args.background is not None:
        options["background"] = _split(args.background)
    if args.size is not None:
        options["size"] = args.size
    if args.window is not None:  # 0 = whole image
        options["window"] = args.window or None
    if args.window_stride is not None:
        options["window_stride"] = args.window_stride
    if args.logit_scale is not None:
        options["logit_scale"] = args.logit_scale
    if args.head is not None:  # read (and checked) once, here
        from clips4rt.fewshot import Head

        options["head"] = Head.load(args.head)
    if args.templates is not None:
        from clips4rt.prompts import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES

        named = {"imagenet": IMAGENET_TEMPLATES, "simple": SIMPLE_TEMPLATES}
        if args.templates in named:
            options["templates"] = list(named[args.templates])
        else:
            path = Path(args.templates)
            if not path.is_file():
                raise ValueError(
                    f"--templates {args.templates!r}: give imagenet, simple, or a text file "
                    "with one template a line, each holding one '{}'"
                )
            options["templates"] = [t for t in path.read_text().splitlines() if t.strip()]
    return options


def _classes(args):
    """--classes "cat,dog" or --classes-file FILE (one class a line, synonyms by '|');
    neither with --head (its classes alone)."""
    if args.classes is None and args.classes_file is None and args.head is not None:
        return None
    if (args.classes is None) == (args.classes_file is None):
        raise ValueError('give --classes "cat,dog" or --classes-file FILE (one of them)')
    if args.classes_file is not None:
        from clips4rt.vocab import read_classes_file

        return read_classes_file(args.classes_file)
    classes = _split(args.classes)
    if not classes:
        raise ValueError('--classes is empty: give names like --classes "cat,dog"')
    return classes


def _segment(args) -> int:
    from clips4rt.files import write_atomic
    from clips4rt.segmenter import Segmenter

    if args.discover:
        return _discover(args)
    classes = _classes(args)
    if args.ray is not None:
        from clips4rt import raydata

        raydata.require()  # before anything is loaded
        if args.ray not in ("local", "auto") and ":" not in args.ray:
            raise ValueError(f"--ray {args.ray!r} is not a Ray address ('auto', "
                             "'ray://head:10001', 'head:6379'); put --ray after the images, "
                             "or write --ray local")  # fmt: skip
        if args.ray_actors < 1 or (args.threads is not None and args.threads < 1):
            raise ValueError("--ray-actors and --threads must be >= 1")
    seg = Segmenter(args.model, threads=args.threads, **_device_options(args))
    options = _options(args)
    names = seg._query(classes, **options).vocab.classes  # checks every option now
    inputs = expand(args.images)
    if not inputs:
        raise FileNotFoundError(f"no image files in {args.images}")
    out = Path(args.out).expanduser()
    labels_out = _label_outputs(args, names)  # checked (and libraries imported) up front
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "classes.txt", "".join(f"{c}\n" for c in names).encode())
    failed = 0
    bar = _progress(len(inputs), args.quiet)
    results = (
        raydata.results(
            args.ray,
            inputs,
            classes,
            args.model,
            actors=args.ray_actors,
            threads=args.threads or 1,
            batch_size=args.ray_batch,
            **options,
        )
        if args.ray is not None
        else ((image, stem, *_run_one(seg, image, classes, options)) for image, stem in inputs)
    )
    for image, stem, labels, files, error in results:
        if bar is not None:
            bar.update(1)
        if error:
            _print(bar, f"skipped {image}: {error}", sys.stderr)
            failed += 1
            continue
        (out / stem).parent.mkdir(parents=True, exist_ok=True)
        for suffix, content in zip(("_labels.png", "_overlay.png"), files):
            if isinstance(content, bytes):  # encoded by a Ray actor as save_image_atomic would
                write_atomic(out / f"{stem}{suffix}", content)
            else:
                save_image_atomic(content, out / f"{stem}{suffix}")
        # COCO file_name: the path below the inputs' common folder; YOLO: the output stem
        name = image.name if isinstance(image, Path) else url_name(image)
        labels_out.add(labels, stem.with_name(name), stem)
        _print(bar, f"{image}: {_summary(labels, names)} -> {out / f'{stem}_overlay.png'}")
    if bar is not None:
        bar.close()
    labels_out.close()
    return 1 if failed else 0


def _fit_head(args) -> int:
    """``fit-head``: a few-shot head from images and their masks (``clips4rt.fewshot``)."""
    from clips4rt.fewshot import fit_head
    from clips4rt.segmenter import Segmenter

    classes = _classes(args)
    if isinstance(classes, dict):
        classes = list(classes)
    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists: pass --force to replace it, or another --out")
    masks_dir = Path(args.masks).expanduser()
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"--masks {masks_dir} is not a folder")
    inputs = [(image, stem) for image, stem in expand(args.images) if isinstance(image, Path)]
    if not inputs:
        raise FileNotFoundError(f"no image files in {args.images}")
    masks = []
    for image, _ in inputs:
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise FileNotFoundError(f"no mask for {image}: expected {mask}")
        masks.append(mask)
    seg = Segmenter(args.model, threads=args.threads, **_device_options(args))
    head = fit_head(seg, [i for i, _ in inputs], masks, classes, init=args.init,
                    steps=args.steps, size=args.size)  # fmt: skip
    head.save(out)
    cells = head.meta["cells"]
    print(f"{out}: {len(head.classes)} classes from {len(inputs)} images ("
          + ", ".join(f"{c} {n} cells" for c, n in cells.items()) + ")")
    return 0


def _discover(args) -> int:
    """``segment --discover``: class-free segments per image (``Segmenter.discover``):
    ``<name>_segments.png`` (index = segment), ``<name>_overlay.png`` and
    ``<name>_segments.json`` (each segment's share and, with --vocabulary, names)."""
    from clips4rt.discover import write_folder
    from clips4rt.segmenter import Segmenter

    if (args.classes or args.classes_file or args.head or args.ray is not None or args.coco
            or args.yolo):  # fmt: skip
        raise ValueError("--discover finds segments without classes: drop --classes, "
                         "--classes-file, --head, --coco, --yolo and --ray (name them with "
                         "--vocabulary)")  # fmt: skip
    vocabulary = None
    if args.vocabulary:
        path = Path(args.vocabulary).expanduser()
        if path.is_file():
            from clips4rt.vocab import read_classes_file

            vocabulary = list(read_classes_file(path))
        else:
            vocabulary = _split(args.vocabulary)
    seg = Segmenter(args.model, threads=args.threads, **_device_options(args))
    inputs = expand(args.images)
    if not inputs:
        raise FileNotFoundError(f"no image files in {args.images}")
    failed = write_folder(seg, inputs, Path(args.out).expanduser(), args.k, vocabulary,
                          size=args.size)  # fmt: skip
    return 1 if failed else 0


def _run_one(seg, image, classes, options):
    """(labels, (label PNG image, overlay image), error) of one image, in this process."""
    from clips4rt.visualize import label_png

    try:
        r = seg.run(image, classes, **options)
    except (ImageError, FileNotFoundError) as e:
        return None, None, str(e)
    return r.labels, (label_png(r.labels, len(r.classes)), r.overlay()), ""


def _progress(n: int, quiet: bool):
    """A progress bar on stderr for more than one file (where tqdm is installed and
    stderr is a terminal; ``--quiet``: none)."""
    if quiet or n < 2:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=n, unit="image", disable=None, file=sys.stderr)


def _print(bar, text: str, file=None) -> None:
    if bar is not None and not bar.disable:
        bar.write(text, file=file or sys.stdout)
    else:
        print(text, file=file or sys.stdout)


def _label_outputs(args, names):
    """``segment``'s --coco / --yolo outputs (``clips4rt.labels.DatasetWriter``), checked
    and their libraries imported before any image is segmented."""
    from clips4rt.labels import DatasetWriter

    if args.instances and not args.coco:
        raise ValueError("--instances shapes the --coco annotations: give --coco FILE too")
    return DatasetWriter(names, coco=args.coco, yolo=args.yolo, instances=args.instances,
                         tolerance=args.tolerance)  # fmt: skip


def _video(args) -> int:
    from clips4rt.segmenter import Segmenter
    from clips4rt.video import is_live, segment_video

    classes = _classes(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError("--max-frames must be >= 1")
    seg = Segmenter(args.model, threads=args.threads, **_device_options(args))
    options = _options(args)
    if args.latest and not is_live(args.input):
        print("clips4rt video: --latest drops the frames that come while one is segmented; a "
              "file is read faster than that, so most of its frames will be dropped",
              file=sys.stderr)  # fmt: skip
    summary = segment_video(
        seg,
        args.input,
        classes,
        args.out,
        labels_dir=args.labels_dir,
        jsonl=args.jsonl,
        polygons=args.polygons,
        tolerance=args.tolerance,
        progress=not args.quiet,
        max_frames=args.max_frames,
        latest=args.latest,
        **options,
    )
    written = ", ".join(str(p) for p in (summary["out"], summary["jsonl"], args.labels_dir) if p)
    dropped = f" ({summary['dropped']} dropped for --latest)" if summary["dropped"] else ""
    print(
        f"{summary['frames']} frames{dropped} in {summary['seconds']:.1f} s = "
        f"{summary['fps']:.1f} fps -> {written}"
    )
    for c, share in sorted(summary["share"].items(), key=lambda kv: -kv[1]):
        print(f"  {c:16s} {100 * share:5.1f}% of pixels")
    missing = [c for c in classes if c not in summary["share"]]
    if missing:
        print(f"  not found in any frame: {', '.join(missing)}")
    if summary["background"]:
        print(f"  {'(background)':16s} {100 * summary['background']:5.1f}% of pixels")
    return 0


def _demo(args) -> int:
    from importlib import resources

    from clips4rt.segmenter import Segmenter, default_model

    root = resources.files("clips4rt") / "models"
    model = default_model()
    classes = (
        _split(args.classes) if args.classes else (root / "toy.classes.txt").read_text().split("\n")
    )
    classes = [c for c in classes if c.strip()]
    image = args.image or str(resources.files("clips4rt") / "data" / "demo_scene.png")
    seg = Segmenter(model, threads=args.threads)
    r = seg.run(image, classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_overlay.png"
    save_image_atomic(r.overlay(scale=max(1, 512 // max(r.labels.shape))), path)
    total = r.labels.size
    found = sorted(((int((r.labels == k).sum()), c) for k, c in enumerate(classes)), reverse=True)
    print(
        f"model: {model} ({seg.info.kind}, teacher {seg.info.provenance.get('teacher')}, "
        f"weights {seg.info.provenance.get('pretrained')})"
    )
    print(f"image: {image}")
    for n, c in found:
        if n:
            print(f"  {c:12s} {100 * n / total:5.1f}% of pixels")
    if (r.labels < 0).any():
        print(f"  {'(background)':12s} {100 * (r.labels < 0).sum() / total:5.1f}% of pixels")
    print(f"overlay: {path}")
    return 0


def _info(args) -> int:
    from clips4rt.segmenter import Segmenter

    seg = Segmenter(args.model)  # None: the embedded model
    info = dataclasses.asdict(seg.info)
    info["prompt_templates"] = f"{len(seg.info.prompt_templates)} templates"
    print(json.dumps(info, indent=2))
    return 0


def _device_options(args) -> dict:
    providers = [x.strip() for x in args.providers.split(",")] if args.providers else None
    return {"providers": providers, "postprocess": args.postprocess,
            "trt_fp16": not args.no_trt_fp16, "trt_cache": args.trt_cache}  # fmt: skip


def _serve(args) -> int:
    from clips4rt.serve import Limits, serve

    if args.max_body <= 0 or args.max_concurrent < 1 or args.timeout <= 0:
        raise ValueError("--max-body and --timeout must be > 0, --max-concurrent >= 1")
    limits = Limits(max_body=int(args.max_body * 2**20), max_concurrent=args.max_concurrent,
                    queue_timeout=args.queue_timeout, timeout=args.timeout)  # fmt: skip
    serve(args.model, args.host, args.port, args.token, limits, args.allow_urls, args.threads,
          head=args.head, **_device_options(args))  # fmt: skip
    return 0


def _models(args) -> int:
    from clips4rt import hub

    have = {name: (path, size) for name, path, size in hub.cached()}
    print(f"{'name':<30} {'weights':>9}  cached")
    for name, recipe in hub.KNOWN.items():
        path, size = have.pop(name, (None, 0))
        got = f"{path} ({size / 1e6:.0f} MB)" if path else "no (built on first use)"
        print(f"{name:<30} {recipe.weights_mb or '?':>6} MB  {got}")
    for name, (path, size) in have.items():
        print(f"{name:<30} {'':>9}  {path} ({size / 1e6:.0f} MB)")
    print(f"\ncache: {hub.home()} (set {hub.HOME_ENV} to move it). Any open_clip name/tag "
          "works the same way (open_clip.list_pretrained()); building one needs "
          "pip install 'clips4rt[export]'.")  # fmt: skip
    return 0


def _export(argv: list[str]) -> int:
    from clips4rt import export

    try:
        export.require()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from clips4rt.export.cli import main as export_main

    return export_main(argv)


COMMANDS = {"segment": _segment, "video": _video, "demo": _demo, "serve": _serve,
            "fit-head": _fit_head, "info": _info, "models": _models}  # fmt: skip


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: outputs cleaned up


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:  # its own parser and --help
        return _export(argv[1:])
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: nothing partial was left behind", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clips4rt info m.onnx | head`: the reader left, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (BundleError, ImageError, VideoError, ValueError, TypeError, FileNotFoundError,
            ImportError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the output side: --out a file, no permission, disk full, ...
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
