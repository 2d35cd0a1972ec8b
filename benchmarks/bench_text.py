"""Prompt latency (issue 32): seconds per new class through a bundle's text graph, the
77-token graph of older exports against the graph of dynamic length, side by side.

    python benchmarks/bench_text.py [--reps 3] [--no-vit]

Models: the toy teacher's text tower (``train/assets``, context 32) and a ViT-B/16
CLIP with random weights (``open_clip.create_model("ViT-B-16", force_quick_gelu=True)``,
seed 0: the tower's shape is what costs, not its weights). Each is exported three ways
with the export's own code: ``fixed`` (the text graph as exports before the dynamic axis
wrote it: the input length fixed at context_length), ``dynamic`` (float32 compute,
float16 storage, as ``clips4rt export --fp16-weights`` and the by-name recipe write it)
and ``int8`` (``--int8-text``: dynamic quantization of the float32 graph).

Timing: ``TextEncoder.embeddings`` of k new classes (k = 1, 4, 20) x the 80 ImageNet
templates, a fresh encoder (empty cache) per call, the three graphs alternated, median
of ``--reps``; threads=2 (this machine's cores), spinning off as the Segmenter sets it.
Then, on the dynamic graph: prompts per graph call (``clips4rt.text.BATCH``), threads and
the memory arena. Exactness: the cosine of every prompt's embedding, dynamic vs fixed and
int8 vs fixed, over 20 names x 80 templates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAMES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]  # fmt: skip  COCO's 80 things


def export_graphs(model, folder: Path) -> dict[str, Path]:
    """fixed / dynamic / int8 text graphs of an open_clip ``model``."""
    import torch

    from clips4rt.export.dense_clip import CLIPText
    from clips4rt.export.graphs import _onnx_export, store_weights_fp16
    from clips4rt.export.quantize import quantize_text
    from clips4rt.tokenizer import tokenize

    text = CLIPText(model.eval())
    ctx = int(model.context_length)
    ex = torch.from_numpy(tokenize(["a photo of a cat."], ctx))
    io = ("tokens", "text_embeddings")
    paths = {k: folder / f"{k}.onnx" for k in ("fixed", "dynamic", "float32", "int8")}
    # fixed: no length axis declared, traced at full length = the graph older exports wrote
    _onnx_export(text, ex, paths["fixed"], io, {"tokens": {0: "n"}, "text_embeddings": {0: "n"}})
    dyn_axes = {"tokens": {0: "n", 1: "length"}, "text_embeddings": {0: "n"}}
    _onnx_export(text, ex[:, :8], paths["float32"], io, dyn_axes)
    _onnx_export(text, ex[:, :8], paths["dynamic"], io, dyn_axes)
    quantize_text(paths["float32"], paths["int8"])
    for k in ("fixed", "dynamic", "int8"):
        store_weights_fp16(paths[k])
    return {k: paths[k] for k in ("fixed", "dynamic", "int8")}


def encoder(path: Path, ctx: int, dim: int, threads=2, arena=True):
    import onnxruntime as ort

    from clips4rt import bundle as B
    from clips4rt.prompts import IMAGENET_TEMPLATES
    from clips4rt.text import TextEncoder

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    info = B.BundleInfo(kind="bench", embed_dim=dim, stride=8, input_size=64, logit_scale=100,
                        text_model=path.name, text_model_sha256="0" * 64, context_length=ctx,
                        prompt_templates=IMAGENET_TEMPLATES)  # fmt: skip
    return lambda: TextEncoder(sess, info, path), sess


def per_class(make, k: int, offset: int) -> float:
    """Seconds per class for k new classes (a fresh encoder: nothing cached)."""
    enc = make()
    names = [NAMES[(offset + i) % len(NAMES)] for i in range(k)]
    t0 = time.perf_counter()
    enc.embeddings(names)
    return (time.perf_counter() - t0) / k


def exactness(makes) -> dict:
    from clips4rt.prompts import IMAGENET_TEMPLATES
    from clips4rt.tokenizer import tokenize

    out = {}
    ref = None
    for name, make in makes.items():
        enc = make()
        toks = tokenize([t.replace("{}", c) for c in NAMES[:20] for t in IMAGENET_TEMPLATES],
                        enc.info.context_length)  # fmt: skip
        e = enc.encode_tokens(toks)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        p = enc.embeddings(NAMES[:20]).astype(np.float64)
        if ref is None:
            ref = (e, p)
            continue
        cos = (e * ref[0]).sum(1)
        out[name] = (cos.min(), cos.mean(), (p * ref[1]).sum(1).min())
    return out


def bench(label: str, model, reps: int) -> None:
    import clips4rt.text as T

    ctx, dim = int(model.context_length), int(model.text_projection.shape[-1])
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_graphs(model, Path(tmp))
        makes = {k: encoder(p, ctx, dim)[0] for k, p in paths.items()}
        sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
        print(f"\n## {label} (context {ctx}, D={dim}; files MB: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()) + ")")  # fmt: skip
        for make in makes.values():  # warm up: first run allocates
            per_class(make, 1, 0)
        print("| new classes | fixed s/class | dynamic s/class | int8 s/class | fixed/dynamic "
              "| fixed/int8 |\n|---|---|---|---|---|---|")  # fmt: skip
        for k in (1, 4, 20):
            t = {name: [] for name in makes}
            for r in range(reps):
                for name, make in makes.items():
                    t[name].append(per_class(make, k, 7 * r + k))
            m = {name: statistics.median(v) for name, v in t.items()}
            print(
                f"| {k} | {m['fixed']:.3f} | {m['dynamic']:.3f} | {m['int8']:.3f} | "
                f"{m['fixed'] / m['dynamic']:.1f}x | {m['fixed'] / m['int8']:.1f}x |"
            )
        ex = exactness(makes)
        for name, (lo, mean, proto) in ex.items():
            print(
                f"cosine to fixed, {name}: per prompt min {lo:.6f} mean {mean:.6f}; "
                f"class prototypes min {proto:.6f} (1600 prompts)"
            )
        # prompts per call, on the dynamic graph
        dyn = makes["dynamic"]
        keep = T.BATCH
        rows = []
        for batch in (16, 32, 64, 128, 256):
            T.BATCH = batch
            med = [statistics.median(per_class(dyn, k, 3 * r + batch) for r in range(reps))
                   for k in (1, 4, 20)]  # fmt: skip
            rows.append(f"| {batch} | " + " | ".join(f"{v:.3f}" for v in med) + " |")
        T.BATCH = keep
        print(
            f"\nprompts per graph call (dynamic graph, s/class at 1 / 4 / 20 new classes; "
            f"the runtime uses {keep}):\n| batch | 1 | 4 | 20 |\n|---|---|---|---|"
        )
        print("\n".join(rows))
        print("\nsession options (dynamic graph, 4 new classes, s/class):")
        for threads in (1, 2):
            for arena in (True, False):
                make = encoder(paths["dynamic"], ctx, dim, threads, arena)[0]
                per_class(make, 1, 0)
                v = statistics.median(per_class(make, 4, 5 * r) for r in range(reps))
                print(f"- threads={threads}, memory arena {'on' if arena else 'off'}: {v:.3f}")


def swap_text(bundle: Path, text: Path, folder: Path) -> Path:
    """A copy of ``bundle`` in ``folder`` whose text graph is ``text`` (metadata updated)."""
    import json
    import shutil

    import onnx

    from clips4rt import bundle as B

    folder.mkdir(parents=True)
    shutil.copy(text, folder / "toy.text.onnx")
    model = onnx.load(str(bundle))
    for p in model.metadata_props:
        if p.key == B.PREFIX + "text_model_sha256":
            p.value = json.dumps(B.sha256_file(folder / "toy.text.onnx"))
    onnx.save(model, str(folder / "toy.onnx"))
    return folder / "toy.onnx"


def toy_labels(val_count: int) -> None:
    """The embedded toy student with its own (fixed-length) text graph, the toy teacher's
    text tower re-exported with the length axis, and that graph in int8: toy-world mIoU
    (``train.evaluate``, all 20 names, toy seed 3000) and the share of equal labels."""
    import clips4rt
    from clips4rt.export.clip_loader import load_clip
    from train.evaluate import evaluate
    from train.evaluate.voc import VOCFolder
    from train.toyworld import write_dataset

    assets = REPO / "train" / "assets"
    toy = load_clip(model_config=str(assets / "toy-teacher.json"),
                    pretrained=str(assets / "toy-teacher.pt"))[0]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graphs = export_graphs(toy, tmp)
        val = write_dataset(tmp / "val", seed=3000, count=val_count, size=128)
        bundles = {"embedded (fixed 32)": clips4rt.default_model()}
        for k in ("dynamic", "int8"):
            bundles[k] = swap_text(clips4rt.default_model(), graphs[k], tmp / k)
        print(f"\ntoy student, its text graph swapped; toy seed 3000, {val_count} scenes, "
              "all 20 names:\n| text graph | mIoU | known | unknown | labels equal to "
              "embedded |\n|---|---|---|---|---|")  # fmt: skip
        labels = {}
        for k, path in bundles.items():
            r = evaluate(str(path), str(val), threads=2)
            seg = clips4rt.Segmenter(path, threads=2)
            names = VOCFolder(val).classes
            imgs = sorted((val / "JPEGImages").iterdir())[:50]
            labels[k] = np.concatenate([seg.run(str(f), names).labels.ravel() for f in imgs])
            same = (labels[k] == labels["embedded (fixed 32)"]).mean()
            print(
                f"| {k} | {r['miou']:.2f} | {r['miou_known']:.2f} | {r['miou_unknown']:.2f} "
                f"| {100 * same:.2f} % (50 scenes) |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-vit", action="store_true", help="the toy tower only")
    ap.add_argument("--val-count", type=int, default=200, help="toy scenes for mIoU (0: skip)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    import open_clip
    import torch

    from clips4rt.export.clip_loader import load_clip

    logging.getLogger().setLevel(logging.ERROR)
    assets = REPO / "train" / "assets"
    toy = load_clip(model_config=str(assets / "toy-teacher.json"),
                    pretrained=str(assets / "toy-teacher.pt"))[0]  # fmt: skip
    bench("toy teacher", toy, args.reps)
    if args.val_count:
        toy_labels(args.val_count)
    if not args.no_vit:
        torch.manual_seed(0)
        vit = open_clip.create_model("ViT-B-16", force_quick_gelu=True)
        bench("ViT-B/16 (random weights)", vit, args.reps)


if __name__ == "__main__":
    main()
