"""int8 image graphs: static post-training quantization with onnxruntime's tools.

``python -m train.export ... --int8 --calibration DIR [--calibration-count N]`` exports
the float bundle, then rewrites its image graph as QDQ int8 (per-channel int8 weights,
uint8 activations with MinMax ranges) over its MatMul/Conv/Gemm layers; the text graph
stays float. Calibration images go through the runtime's own preprocessing (load,
resize to the bundle's working size); every fourth is held out. At least ``MIN_IMAGES``
usable images are needed, and near-constant ones (pixel standard deviation under
``MIN_STD``: black frames) are skipped: ranges calibrated on them pass a gate measured
on more of the same, then fail on real frames. The gate also measures the bundled demo
scene, an image from outside the calibration set.

Dense (pixel-level) embeddings suffer from int8 more than image-level ones, so the
parity check measures them: the cosine between float and int8 pixel embeddings on the
held-out images, mean and 1st percentile. If the bound (``MIN_MEAN``, ``MIN_P1``) is
missed, per-layer sensitivity decides which layers stay float: onnxruntime's
``qdq_loss_debug`` gives each quantized layer's output SQNR against the float model,
and the noise a layer adds is the drop from its input's SQNR to its output's; the
worst 1, 2, 4, ... layers are kept in float until the bound holds (the calibration
ranges are computed once and cached). If it never holds, the export fails.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

MIN_MEAN, MIN_P1 = 0.98, 0.90  # cosine(float, int8) of pixel embeddings, held-out images
QUANT_OPS = ("MatMul", "Conv", "Gemm")
MIN_IMAGES = 8  # usable calibration images: 6 calibrate, 2 held out at the least
MIN_STD = 4.0  # pixel standard deviation (0-255) under which an image is near-constant


def calibration_files(folder, count: int) -> list[Path]:
    """The image files a calibration would read (checked before any export): the folder
    must exist and hold at least ``MIN_IMAGES``; ``count`` at least ``MIN_IMAGES``."""
    from clips4rt.images import IMAGE_SUFFIXES

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--calibration {root}: no such folder")
    if count < MIN_IMAGES:
        raise ValueError(f"--calibration-count must be >= {MIN_IMAGES} (calibration + "
                         f"held-out), got {count}")  # fmt: skip
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())  # fmt: skip
    if len(files) < MIN_IMAGES:
        raise ValueError(
            f"--calibration {root}: {len(files)} image files; give a folder of at least "
            f"{MIN_IMAGES} (ideally 32-256) images like the deployment's"
        )
    return files


def calibration_frames(folder, count: int, seg) -> list[np.ndarray]:
    """Up to ``count`` images of ``folder`` (sorted, recursive) as (1, h, w, 3) uint8
    frames at ``seg``'s working size, as the runtime prepares them. Unreadable files are
    skipped with a warning; fewer readable images than ``count`` warn and use those;
    none is an error. Mixed sizes are fine: each frame gets its own working size."""
    from clips4rt.errors import ImageError
    from clips4rt.images import load_image
    from clips4rt.kernels import resize_rgb

    root = Path(folder).expanduser()
    files = calibration_files(root, count)
    frames, flat = [], []
    for f in files:
        if len(frames) == count:
            break
        try:
            image = load_image(f)
            hh, ww = seg.working_size(*image.shape[:2])
        except (ImageError, ValueError, OSError) as e:
            warnings.warn(f"calibration: skipping {f} ({e})", stacklevel=2)
            continue
        if float(image.std()) < MIN_STD:
            flat.append(f.name)
            continue
        frames.append(resize_rgb(image, (hh, ww))[None])
    if flat:
        warnings.warn(f"calibration: skipping {len(flat)} near-constant images (pixel std < "
                      f"{MIN_STD}: {', '.join(flat[:5])})", stacklevel=2)  # fmt: skip
    if len(frames) < MIN_IMAGES:
        raise ValueError(
            f"--calibration {root}: {len(frames)} usable images of the {len(files)} files "
            f"there ({len(flat)} near-constant); give a folder of at least {MIN_IMAGES} "
            "(ideally 32-256) varied images like the deployment's"
        )
    if len(frames) < count:
        warnings.warn(
            f"calibration: {len(frames)} readable images, fewer than the "
            f"--calibration-count {count} asked; using them all",
            stacklevel=2,
        )
    return frames


def _outside_probe(like: np.ndarray) -> list[np.ndarray]:
    """The bundled demo scene at ``like``'s working size: a frame from outside any
    calibration folder, so that the gate never measures only what it calibrated on."""
    from importlib import resources

    from clips4rt.images import load_image
    from clips4rt.kernels import resize_rgb

    scene = load_image(str(resources.files("clips4rt") / "data" / "demo_scene.png"))
    return [resize_rgb(scene, like.shape[1:3])[None]]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel cosine of (1, D, h, w) embeddings."""
    a, b = a.reshape(a.shape[1], -1), b.reshape(b.shape[1], -1)
    den = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return (a * b).sum(0) / np.maximum(den, 1e-12)


def _run(path, frames) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"image": f})[0] for f in frames]


def parity(float_path, int8_path, frames) -> dict:
    """Cosine between float and int8 pixel embeddings over ``frames``: mean, 1st pct."""
    cos = np.concatenate([_cosines(a, b) for a, b in zip(_run(float_path, frames),
                                                          _run(int8_path, frames))])  # fmt: skip
    return {"cosine_mean": float(cos.mean()), "cosine_p1": float(np.percentile(cos, 1))}


def _reader(frames):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(frames)

        def get_next(self):
            f = next(self.it, None)
            return None if f is None else {"image": f}

        def rewind(self):
            self.it = iter(frames)

    return Reader()


def _quantize(src, dst, frames, exclude, cache) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), _reader(frames), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANT_OPS), per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude), calibration_cache_path=str(cache),
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )  # fmt: skip


def sensitivity(float_path, int8_path, frames) -> list[tuple[str, float]]:
    """(node name, dB of SQNR it loses) of every quantized layer, worst first, from
    onnxruntime's qdq_loss_debug over ``frames`` (float vs QDQ activations)."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory() as tmp:
        fa, qa = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(fa))
        dbg.modify_model_output_intermediate_tensors(str(int8_path), str(qa))
        float_acts = dbg.collect_activations(str(fa), _reader(frames))
        qdq_acts = dbg.collect_activations(str(qa), _reader(frames))
    match = dbg.create_activation_matching(qdq_acts, float_acts)
    sqnr = {}
    for name, m in match.items():
        if "float" in m and "pre_qdq" in m:
            sqnr[name] = dbg.compute_signal_to_quantization_noice_ratio(m["float"], m["pre_qdq"])
    model = onnx.load(str(float_path), load_external_data=False)
    lost = []
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS or not node.output or node.output[0] not in sqnr:
            continue
        before = min((sqnr[i] for i in node.input if i in sqnr), default=math.inf)
        after = sqnr[node.output[0]]
        lost.append((node.name, (before - after) if math.isfinite(before) else -after))
    return sorted(lost, key=lambda t: -t[1])


def quantize_image_graph(path, frames, min_mean=MIN_MEAN, min_p1=MIN_P1) -> dict:
    """Rewrite the float image graph ``path`` as int8 in place (metadata kept, precision
    "int8"); returns the report (held-out parity, layers kept float). Raises
    RuntimeError when no tried set of float layers meets the bound."""
    path = Path(path)
    if len(frames) < MIN_IMAGES:
        raise ValueError(f"{len(frames)} calibration frames; at least {MIN_IMAGES} are needed")
    calib = [f for i, f in enumerate(frames) if i % 4 != 3]
    heldout = [f for i, f in enumerate(frames) if i % 4 == 3] + _outside_probe(frames[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache, out = tmp / "ranges.cache", tmp / "int8.onnx"
        _quantize(path, out, calib, [], cache)
        report = parity(path, out, heldout)
        floats: list[str] = []
        if report["cosine_mean"] < min_mean or report["cosine_p1"] < min_p1:
            ranked = [n for n, _ in sensitivity(path, out, heldout)]
            k = 1
            while k <= max(1, len(ranked) // 2):
                floats = ranked[:k]
                _quantize(path, out, calib, floats, cache)
                report = parity(path, out, heldout)
                if report["cosine_mean"] >= min_mean and report["cosine_p1"] >= min_p1:
                    break
                k *= 2
            else:
                raise RuntimeError(
                    f"int8 parity stays under the bound (mean cosine {report['cosine_mean']:.4f}"
                    f" >= {min_mean}, 1st percentile {report['cosine_p1']:.4f} >= {min_p1}) with "
                    f"up to {len(floats)} of {len(ranked)} layers in float; export it as float"
                    " (--fp16-weights) or calibrate on images closer to the deployment's"
                )
        bound = {"cosine_mean": min_mean, "cosine_p1": min_p1}
        report.update(calibration_images=len(calib), heldout_images=len(heldout),
                      float_layers=floats, bound=bound)  # fmt: skip
        src, q = onnx.load(str(path)), onnx.load(str(out))
        meta = {p.key: p.value for p in src.metadata_props}
        meta["clips4rt.precision"] = '"int8"'
        prov = json.loads(meta.get("clips4rt.provenance", "{}"))
        prov["int8"] = {k: report[k] for k in ("cosine_mean", "cosine_p1", "calibration_images")}
        prov["int8"]["float_layers"] = len(floats)
        meta["clips4rt.provenance"] = json.dumps(prov)
        del q.metadata_props[:]
        for k, v in meta.items():
            q.metadata_props.add(key=k, value=v)
        onnx.save(q, str(path))
    return report


# ------------------------------------------------------------------ the text graph
#: cosine(float, int8) every probe prompt's text embedding must reach
TEXT_MIN_COSINE = 0.99
#: class names the text gate probes when a bundle has no known classes of its own
#: (things and stuff of everyday photos, one to four words)
PROBE_NAMES = (
    "person", "car", "dog", "cat", "bicycle", "traffic light", "fire hydrant", "chair",
    "dining table", "potted plant", "sky", "grass", "road", "building", "tree", "water",
    "sand", "snow", "brick wall", "wooden floor",
)  # fmt: skip


def quantize_text(src, dst) -> None:
    """Write ``src`` (a float32 text graph) as int8 to ``dst``: onnxruntime's dynamic
    quantization (per-channel int8 weights of every MatMul and of the token table,
    activations quantized per call from their own range: no calibration data). Text
    batches are small and their ranges cheap to measure, which static ranges would
    only approximate; MatMulInteger runs on VNNI / dot-product CPUs."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static ranges
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])  # fmt: skip
    finally:
        root.setLevel(level)


def text_parity(float_text, int8_text, image_graph, info, names=None) -> dict:
    """How far the int8 text graph ``int8_text`` is from ``float_text``: the cosine of
    every probe prompt's embedding (``names`` x the bundle's templates; default its
    known classes, else ``PROBE_NAMES``), min and mean; the cosine of the class
    prototypes (template means); and the effect on labels: the share of the demo
    scene's pixels (``image_graph``, whole image, squared to the bundle's input size) whose
    label over ``names`` is the same with both."""
    import onnxruntime as ort

    from clips4rt.text import TextEncoder
    from clips4rt.tokenizer import tokenize

    names = list(names or info.known_classes or PROBE_NAMES)
    opts = ort.SessionOptions()
    protos, prompts = [], []
    for path in (float_text, int8_text):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        enc = TextEncoder(sess, info, path)
        toks = tokenize([t.replace("{}", c) for c in names for t in info.prompt_templates],
                        info.context_length)  # fmt: skip
        emb = enc.encode_tokens(toks)
        prompts.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
        protos.append(enc.embeddings(names).astype(np.float64))
    cos = (prompts[0] * prompts[1]).sum(1)
    side = max(info.stride, info.input_size // info.stride * info.stride)
    scene = _outside_probe(np.zeros((1, side, side, 3), np.uint8))[0]
    sess = ort.InferenceSession(str(image_graph), opts, providers=["CPUExecutionProvider"])
    emb = sess.run(None, {"image": scene})[0][0].reshape(info.embed_dim, -1)
    labels = [np.argmax(p @ emb, axis=0) for p in protos]
    return {
        "prompts": len(cos),
        "names": len(names),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "prototype_cosine_min": float((protos[0] * protos[1]).sum(1).min()),
        "label_agreement": float((labels[0] == labels[1]).mean()),
        "bound": TEXT_MIN_COSINE,
    }
