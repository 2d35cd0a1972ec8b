"""The ``clips4rt`` command line's arguments: one parser, its subcommands and their
options (``build_parser``); ``clips4rt.cli`` runs the command a parse names
(``args.command``)."""

from __future__ import annotations

import argparse


def device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--providers", help="onnxruntime providers, comma-separated (default: "
                   "TensorRT/CUDA when available, then CPU)")  # fmt: skip
    p.add_argument("--postprocess", choices=("auto", "cpu", "graph"), default="auto",
                   help="matching on the host (cpu) or inside onnxruntime (graph); auto = "
                   "graph on GPU providers")  # fmt: skip
    p.add_argument("--trt-cache", help="TensorRT engine cache folder (~/.cache/clips4rt/trt)")
    p.add_argument("--no-trt-fp16", action="store_true", help="TensorRT in float32")


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", help="a few-shot head file (clips4rt fit-head): its classes "
                   "follow --classes (or are the only ones)")  # fmt: skip
    p.add_argument("--classes-file", help="class file: one class a line, its names (synonyms) "
                   "separated by '|', e.g. person|man|woman (instead of --classes)")  # fmt: skip
    p.add_argument("--size", type=int, help="short side the graph runs at (default: bundle's)")
    p.add_argument("--no-negatives", action="store_true", help="do not contrast the classes "
                   "with the bundle's negatives (every pixel then gets a class)")  # fmt: skip
    p.add_argument("--window", type=int, help="sliding-window inference: crops of this many "
                   "pixels of the working size, overlaps averaged (0 = whole image; default: "
                   "bundle's)")  # fmt: skip
    p.add_argument("--window-stride", type=int, help="pixels between windows (default: half)")
    p.add_argument(
        "--logit-scale",
        type=float,
        help="softmax temperature of the scores "
        "(default: bundle's; moves probabilities and thresholds, not labels)",
    )
    p.add_argument("--templates", help="prompt templates: imagenet, simple, or a file (one a line)")


def build_parser() -> argparse.ArgumentParser:
    from clips4rt import __version__

    p = argparse.ArgumentParser(prog="clips4rt", description="open-vocabulary segmentation")
    p.add_argument("--version", action="version", version=f"clips4rt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="segment images by class names")
    s.add_argument("images", nargs="+", help="image files, folders, quoted globs or http(s) URLs")
    s.add_argument("--model", help=MODEL_HELP)
    s.add_argument("--classes", help='comma-separated names, "cat,dog"')
    s.add_argument("--out", default="clips4rt_out", help="output folder")
    s.add_argument("--threshold", help="background probability threshold, or per class: "
                   "car=0.6,person=0.4")  # fmt: skip
    s.add_argument("--background", help="comma-separated background class names")
    s.add_argument("--threads", type=int, help="CPU threads")
    s.add_argument("--discover", action="store_true", help="class-free segments instead of "
                   "classes (clusters of the pixel embeddings; Segmenter.discover)")  # fmt: skip
    s.add_argument("--k", type=int, help="--discover: this many segments (default: chosen "
                   "by the best silhouette in [2, 12])")  # fmt: skip
    s.add_argument("--vocabulary", help="--discover: name each segment by its nearest "
                   'entries: a file (one name a line) or "sky,road,car"')  # fmt: skip
    s.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="spread the "
                   "images over Ray actors (the ray extra): a local Ray without ADDRESS, "
                   "else the cluster at ADDRESS ('auto', 'ray://head:10001'); the same files "
                   "as without --ray")  # fmt: skip
    s.add_argument("--ray-actors", type=int, default=2, help="--ray: Segmenters (actors), "
                   "each with --threads threads (default 1)")  # fmt: skip
    s.add_argument("--ray-batch", type=int, default=8, help="--ray: images per actor call")
    s.add_argument("--coco", help="also write a COCO JSON here: one RLE mask per class per "
                   "image (pip install 'clips4rt[labels]')")  # fmt: skip
    s.add_argument("--instances", action="store_true", help="--coco: one annotation per "
                   "connected part of a class instead of one per class")  # fmt: skip
    s.add_argument("--yolo", help="also write YOLO-seg labels into this folder (labels/"
                   "<name>.txt, data.yaml, classes.txt; needs clips4rt[labels])")  # fmt: skip
    s.add_argument("--tolerance", type=float, default=1.0, help="--yolo polygon simplification,"
                   " pixels (Douglas-Peucker; 0 = every boundary pixel; default 1)")  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    common_args(s)
    device_args(s)
    s.set_defaults(command="segment")
    v = sub.add_parser("video", help="segment a video file, URL, stream or camera")
    v.add_argument("input", help="video file, http(s) URL, live stream (rtsp://, rtmp://, "
                   "srt://, udp://, tcp://) or camera (0 = the first; Windows: "
                   '"video=NAME"). A live source runs until --max-frames or Ctrl-C and '
                   "is reopened when lost")  # fmt: skip
    v.add_argument("--classes", help='comma-separated names, "person,car"')
    v.add_argument("--out", help="overlay video (.mp4, .mkv, .mov, .avi, .webm); optional "
                   "when --jsonl or --labels-dir is given")  # fmt: skip
    v.add_argument("--jsonl", help="also write one JSON line per frame here: frame, time "
                   "(s), each class's share of the pixels")  # fmt: skip
    v.add_argument("--polygons", action="store_true", help="--jsonl: add each class's "
                   "polygons (pip install 'clips4rt[labels]')")  # fmt: skip
    v.add_argument("--tolerance", type=float, default=1.0, help="--polygons simplification, "
                   "pixels (default 1)")  # fmt: skip
    v.add_argument("--model", help=MODEL_HELP)
    v.add_argument("--labels-dir", help="also write one label PNG per frame here")
    v.add_argument("--threshold", help="background probability threshold, or per class: "
                   "car=0.6,person=0.4")  # fmt: skip
    v.add_argument("--background", help="comma-separated background class names")
    v.add_argument("--threads", type=int, help="CPU threads")
    v.add_argument("--max-frames", type=int, help="stop after this many frames (cameras)")
    v.add_argument("--latest", action="store_true", help="live sources: segment only the "
                   "newest frame, drop the ones that came meanwhile (latency stays under one "
                   "frame period + one frame's processing)")  # fmt: skip
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    common_args(v)
    device_args(v)
    v.set_defaults(command="video")
    d = sub.add_parser("demo", help="segment a bundled toy scene with the embedded model")
    d.add_argument("--out", default="clips4rt_demo", help="output folder")
    d.add_argument("--image", help="another image to segment (default: the bundled scene)")
    d.add_argument("--classes", help="comma-separated names (default: the toy world's 20)")
    d.add_argument("--threads", type=int, help="CPU threads")
    d.set_defaults(command="demo")
    sv = sub.add_parser("serve", help="an HTTP API and a web page for a model (the serve extra)")
    sv.add_argument("--model", help=MODEL_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                    "any other needs --token)")  # fmt: skip
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/* (default: "
                    "$CLIPS4RT_TOKEN; the page takes it as #token=TOKEN)")  # fmt: skip
    sv.add_argument("--max-body", type=float, default=20, help="MB of one request (default 20)")
    sv.add_argument("--max-concurrent", type=int, default=2, help="inferences at once; "
                    "others wait up to --queue-timeout s, then 503 (default 2)")  # fmt: skip
    sv.add_argument("--queue-timeout", type=float, default=10.0)
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds of one inference "
                    "before 504 (default 60)")  # fmt: skip
    sv.add_argument("--allow-urls", action="store_true", help="let clients send an image URL "
                    "for the server to fetch (off: a server fetching for its clients reaches "
                    "what they cannot)")  # fmt: skip
    sv.add_argument("--threads", type=int, help="CPU threads")
    sv.add_argument("--head", help="a few-shot head file (clips4rt fit-head): its classes are "
                    "added to every request's (a request's head=false leaves them out)")
    device_args(sv)
    sv.set_defaults(command="serve")
    f = sub.add_parser("fit-head", help="fit a few-shot head on labelled images "
                       "(clips4rt.fit_head): segment with --head FILE")  # fmt: skip
    f.add_argument("images", nargs="+", help="image files, folders or quoted globs")
    f.add_argument("--masks", required=True, help="folder of masks: <image stem>.png, pixel "
                   "value = class index (0-based, in --classes order; 255 = ignore)")  # fmt: skip
    f.add_argument("--classes", help='comma-separated names of the indices, "crate,pallet"')
    f.add_argument("--classes-file", help="class file, one name a line (the first name of "
                   "each line counts)")  # fmt: skip
    f.add_argument("--out", required=True, help="head file to write (.npz)")
    f.add_argument("--model", help=MODEL_HELP)
    f.add_argument("--init", choices=("text", "imprint"), default="text", help="text: start "
                   "from the names' prompts (default); imprint: from the labelled pixels "
                   "alone (names the text model cannot know)")  # fmt: skip
    f.add_argument("--steps", type=int, default=100, help="refinement steps (0 = none)")
    f.add_argument("--size", type=int, help="short side the graph runs at (default: bundle's)")
    f.add_argument("--force", action="store_true", help="replace --out if it exists")
    f.add_argument("--threads", type=int, help="CPU threads")
    device_args(f)
    f.set_defaults(command="fit-head", head=None)
    i = sub.add_parser("info", help="print a bundle's metadata")
    i.add_argument("model", nargs="?", help=MODEL_HELP)
    i.set_defaults(command="info")
    m = sub.add_parser("models", help="list the models known by name and the cached ones")
    m.set_defaults(command="models")
    sub.add_parser("export", add_help=False, help="export a CLIP or a CLIP-S4 checkpoint to a "
                   "bundle (pip install 'clips4rt[export]'; `clips4rt export --help`)")  # fmt: skip
    return p


MODEL_HELP = (
    "a bundle's image graph (.onnx), a model name such as ViT-B-16/openai (built once into "
    "the cache; `clips4rt models`) or an https:// URL of a bundle (default: the embedded "
    "toy model)"
)
