"""Export a clips4rt bundle: image graph + text graph + metadata (the bundle format:
``clips4rt.bundle``).

    clips4rt export --clip ViT-B-16 --pretrained openai --dense sclip -o model.onnx
    clips4rt export --model-config tiny.json --dense maskclip -o model.onnx

After writing, both graphs run in onnxruntime against the torch modules on
random inputs at two image sizes; the export fails if the relative error
||ort - torch|| / ||torch|| exceeds 1e-3 (fp32), 2e-2 (``--fp16``) or 5e-3
(``--fp16-weights``).

``--fp16-weights`` halves the files for CPU/edge deployment: large weights are stored
as float16 followed by a Cast to float32, which onnxruntime folds once when the session
is created, so the graph still computes in float32. Its error budget: each weight
rounded to 11 significant bits (unit roundoff u = 2^-11 = 4.9e-4); the independent
roundings of a layer's weights perturb its output by about u in relative terms, and
a dozen layers add up to a few u (measured: 3.4e-4 to 6e-4 on the tiny test CLIP and
the toy student), hence 5e-3 = 10u.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clips4rt import bundle as B
from clips4rt.export.checkpoint import load as load_checkpoint
from clips4rt.prompts import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
from clips4rt.text import token_lengths
from clips4rt.tokenizer import tokenize
from clips4rt.window import check_window

OPSET = 17
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "fp16-weights": 5e-3}
INT8_TEXT_KEY = "text int8 vs float, cosine of the worst prompt"
FP16_WEIGHTS_MIN = 1024  # initializers with fewer elements stay float32
TEMPLATE_SETS = {"imagenet": IMAGENET_TEMPLATES, "simple": SIMPLE_TEMPLATES}

#: what the export reads of a training checkpoint's config, with the defaults of
#: train.method.config.TrainConfig (the training package, absent from the wheel; a test
#: keeps the two equal) for checkpoints written before a field existed
STUDENT_FIELDS = {
    "clip": None,
    "model_config": "train/assets/toy-teacher.json",
    "pretrained": "train/assets/toy-teacher.pt",
    "templates": "simple",
    "backbone": "resnet10t",
    "stride": 8,
    "decoder_width": 128,
    "decoder_norm": "bn",
    "top_stride": 16,
    "teacher_size": 128,
}

#: bounds of its numbers, as train.method.config.RANGES has them (a test keeps them equal):
#: a hostile checkpoint cannot make the export allocate a 10^9-channel decoder
STUDENT_RANGES = {"stride": (1, 64), "decoder_width": (1, 8192), "teacher_size": (16, 4096)}


def expand_path(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def student_config(ckpt: dict, path) -> dict:
    """The checkpoint's config fields the export needs, type-checked (the file is
    untrusted input: a wrong type is a clear error, not a crash deep in a model)."""
    cfg = ckpt["config"]
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: its config is not a mapping")
    out = {}
    for k, default in STUDENT_FIELDS.items():
        v = cfg.get(k, default)
        want = int if isinstance(default, int) else str
        ok = isinstance(v, want) and not isinstance(v, bool) or (v is None and want is str)
        if not ok:
            raise ValueError(f"{path}: config field {k!r} is {v!r}, not a {want.__name__}")
        lo, hi = STUDENT_RANGES.get(k, (None, None))
        if lo is not None and not lo <= v <= hi:
            raise ValueError(f"{path}: config field {k!r} = {v} is outside [{lo}, {hi}]")
        out[k] = v
    return out


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, names, axes) -> None:
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel does not export
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # TorchScript exporter: dynamic H/W through traced shapes
        )


def store_weights_fp16(path: Path, min_elements: int = FP16_WEIGHTS_MIN) -> int:
    """Rewrite an ONNX file so float32 initializers of ``min_elements`` or more are
    stored as float16 and cast back to float32 at the start of the graph (those with
    finite values beyond float16's range stay float32). Returns the number converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits, casts = [], []
    fp16_max = float(np.finfo(np.float16).max)
    for init in g.initializer:
        arr = None
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= min_elements:
            arr = numpy_helper.to_array(init)
        if arr is not None and np.abs(arr[np.isfinite(arr)]).max(initial=0.0) <= fp16_max:
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "__fp16")
            inits.append(half)
            casts.append(
                helper.make_node(
                    "Cast",
                    [half.name],
                    [init.name],
                    to=onnx.TensorProto.FLOAT,
                    name=init.name + "__cast",
                )  # fmt: skip
            )
        else:
            inits.append(init)
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def verify(image_path, text_path, image_ref, text_ref, stride, sizes, seed=0, context_length=77):
    """Run the ONNX graphs and the torch reference modules on random inputs.

    Returns {"image@HxW": rel_err, ..., "text": rel_err}."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    opts = ort.SessionOptions()
    img_sess = ort.InferenceSession(str(image_path), opts, providers=["CPUExecutionProvider"])
    txt_sess = ort.InferenceSession(str(text_path), opts, providers=["CPUExecutionProvider"])
    errs = {}
    for h, w in sizes:
        x = torch.randint(0, 256, (2, h * stride, w * stride, 3), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            ref = image_ref(x).numpy()
        out = img_sess.run(None, {B.IMAGE_INPUT: x.numpy()})[0]
        if out.shape != ref.shape:
            raise RuntimeError(f"image graph gave shape {out.shape}, torch {ref.shape}")
        errs[f"image@{h * stride}x{w * stride}"] = _rel_err(out, ref)
    tokens = tokenize(["a photo of a cat.", "sky", "", "a very long caption " * 20], context_length)
    with torch.no_grad():
        ref = text_ref(torch.from_numpy(tokens)).numpy()
    errs["text"] = _rel_err(txt_sess.run(None, {B.TEXT_INPUT: tokens})[0], ref)
    length = txt_sess.get_inputs()[0].shape[1]
    if not isinstance(length, int):  # cut after the short prompts' end tokens, as the runtime
        n = int(token_lengths(tokens[:3]).max())
        errs[f"text@{n}"] = _rel_err(txt_sess.run(None, {B.TEXT_INPUT: tokens[:3, :n]})[0],
                                     ref[:3])  # fmt: skip
    return errs


def export_bundle(
    image_module: nn.Module,
    text_module: nn.Module,
    out: str | Path,
    info: dict,
    fp16: bool = False,
    verify_sizes=((7, 9), (4, 4)),
    fp16_weights: bool = False,
    int8_text: bool = False,
) -> tuple[B.BundleInfo, dict]:
    """Write ``out`` (image graph + metadata) and ``<stem>.text.onnx``; verify them.

    Args:
        image_module: uint8 (B, H, W, 3) -> (B, D, H/stride, W/stride) unit embeddings.
        text_module: int32 (N, L) -> (N, D) unit embeddings, L <= context_length.
        info: BundleInfo fields except text_model, text_model_sha256, precision.
        fp16: cast both modules to float16 (GPU deployment).
        fp16_weights: store large weights as float16, compute in float32 (small files
            for CPU and edge; see the module docstring).
        int8_text: write the text graph as int8 (``clips4rt.export.quantize.quantize_text``,
            ~3x faster prompts on CPUs); its embeddings must keep a cosine of
            ``TEXT_MIN_COSINE`` to the float graph's on every probe prompt (the report is
            in the provenance as ``text_int8`` and in the returned errors).
        verify_sizes: (h, w) token grids the parity check runs at.

    Returns:
        (BundleInfo written, relative errors per check). Raises RuntimeError if
        an error exceeds the tolerance.
    """
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    text_path = out.with_name(out.stem + ".text.onnx")
    image_ref, text_ref = image_module.eval().float(), text_module.eval().float()
    if fp16 and fp16_weights:
        raise ValueError("choose one of fp16 (float16 compute) and fp16_weights (storage)")
    if fp16 and int8_text:
        raise ValueError("int8_text quantizes a float32 text graph: not with fp16 (GPU)")
    precision = "fp16" if fp16 else "fp32"
    # the runtime's load-time checks, before anything is written (--threshold 5 or nan
    # used to produce a bundle that failed on every run)
    for k, v in info.items():
        problem = B.check_field(k, json.loads(json.dumps(v)))
        if problem:
            raise ValueError(f"bundle field {k!r} = {v!r} {problem}")
    check_window(info.get("window") or None, info.get("window_stride") or None, info["stride"])
    if fp16:
        import copy

        image_module = copy.deepcopy(image_module).half()
        image_module.mean.data, image_module.std.data = image_ref.mean, image_ref.std
        text_module = copy.deepcopy(text_module).half()
    stride, ctx = info["stride"], info.get("context_length", 77)
    ex_img = torch.zeros(1, 2 * stride, 3 * stride, 3, dtype=torch.uint8)
    # traced at a length under context_length; the graph takes any length up to it
    ex_txt = torch.from_numpy(tokenize(["a photo of a cat."], ctx)[:, : min(ctx, 8)])
    _onnx_export(
        image_module,
        ex_img,
        out,
        (B.IMAGE_INPUT, B.IMAGE_OUTPUT),
        {
            B.IMAGE_INPUT: {0: "batch", 1: "height", 2: "width"},
            B.IMAGE_OUTPUT: {0: "batch", 2: "h", 3: "w"},
        },
    )
    # with int8_text the float graph is written aside (the reference of both checks) and
    # the int8 one under the bundle's name
    text_float = text_path.with_name(f".{text_path.stem}.float.onnx") if int8_text else text_path
    try:
        _onnx_export(
            text_module,
            ex_txt,
            text_float,
            (B.TEXT_INPUT, B.TEXT_OUTPUT),
            {B.TEXT_INPUT: {0: "n", 1: "length"}, B.TEXT_OUTPUT: {0: "n"}},
        )
        if int8_text:
            from clips4rt.export.quantize import quantize_text

            quantize_text(text_float, text_path)
        if fp16_weights:
            store_weights_fp16(out)
            store_weights_fp16(text_path)
            if int8_text:
                store_weights_fp16(text_float)
            info = {**info, "provenance": {**info.get("provenance", {}), "weights": "float16"}}
        bundle = B.BundleInfo(
            **info,
            text_model=text_path.name,
            text_model_sha256=B.sha256_file(text_path),
            precision=precision,
        )
        errs = verify(out, text_float, image_ref, text_ref, stride, verify_sizes,
                      context_length=ctx)  # fmt: skip
        tol = TOLERANCE["fp16-weights" if fp16_weights else precision]
        bad = {k: v for k, v in errs.items() if not v <= tol}
        if int8_text:
            from clips4rt.export.quantize import TEXT_MIN_COSINE, text_parity

            rep = text_parity(text_float, text_path, out, bundle)
            if not rep["cosine_min"] >= TEXT_MIN_COSINE:
                bad[INT8_TEXT_KEY] = rep["cosine_min"]
            prov = {**bundle.provenance, "text_int8": rep}
            bundle = dataclasses.replace(bundle, provenance=prov)
    finally:
        if int8_text:
            text_float.unlink(missing_ok=True)
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for k, v in bundle.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out))
    if bad:
        fix = (f" (the bound: {TEXT_MIN_COSINE}; export the text graph as float, without "
               "--int8 / --int8-text)" if INT8_TEXT_KEY in bad else "")  # fmt: skip
        raise RuntimeError(
            f"ONNX graphs disagree with torch beyond {tol:g} (relative), or the int8 text "
            f"graph with the float one: {bad}{fix}. The files in {out.parent} are not usable."
        )
    return bundle, errs


def _clip_info(model, mean, std, templates, threshold, background, logit_scale=None,
               negatives=(), **fields) -> dict:  # fmt: skip
    """BundleInfo fields shared by every export of an open_clip CLIP's towers
    (``logit_scale`` None = the model's own, exp(logit_scale); ``negatives``: the
    negative vocabulary, clips4rt.background)."""
    if logit_scale is None:
        logit_scale = float(model.logit_scale.detach().exp())
    return dict(
        embed_dim=int(model.visual.output_dim),
        logit_scale=float(logit_scale),
        mean=tuple(mean),
        std=tuple(std),
        context_length=int(model.context_length),
        prompt_templates=tuple(TEMPLATE_SETS[templates]),
        background_threshold=float(threshold),
        background_classes=tuple(background),
        negative_classes=tuple(negatives),
        **fields,
    )


def export_dense_clip(
    model,
    name,
    pretrained,
    mean,
    std,
    mode,
    out,
    *,
    input_size=None,
    fp16=False,
    templates="imagenet",
    threshold=0.0,
    background=(),
    fp16_weights=False,
    logit_scale=None,
    window="native",
    window_stride=0,
    negatives=None,
    int8_text=False,
):
    """Export an open_clip CLIP as a training-free dense bundle (kind = ``mode``).

    ``window`` / ``window_stride``: the bundle's sliding-window default (pixels; 0 =
    whole image, stride 0 = half the window); "native" = windows of the model's native
    image size at half-window stride, the official protocol and what measures best on
    the toy teacher (BENCHMARKS.md). ``input_size`` None = 1.5x native with windows
    (SCLIP's 336 for 224), 2x native without. ``negatives``: the negative vocabulary
    (None = ``clips4rt.background.STUFF_NEGATIVES``; () = none)."""
    from clips4rt.background import STUFF_NEGATIVES
    from clips4rt.export.clip_loader import activation
    from clips4rt.export.dense_clip import CLIPText, DenseCLIPImage

    image = DenseCLIPImage(model.visual, mode, mean, std)
    text = CLIPText(model)
    native = max(model.visual.image_size)
    if window == "native":
        window = native - native % image.stride
    window = int(window or 0)
    default_size = (3 * native // 2) if window else 2 * native
    info = _clip_info(
        model,
        mean,
        std,
        templates,
        threshold,
        background,
        logit_scale,
        STUFF_NEGATIVES if negatives is None else negatives,
        kind=mode,
        stride=image.stride,
        input_size=int(input_size or default_size),
        window=window,
        window_stride=int(window_stride or 0),
        provenance={
            "teacher": name,
            "pretrained": pretrained,
            "dense": mode,
            "activation": activation(model),
        },
    )
    if info["input_size"] < image.stride:
        raise ValueError(f"--input-size must be at least the patch size {image.stride}")
    return export_bundle(image, text, out, info, fp16=fp16, fp16_weights=fp16_weights,
                         int8_text=int8_text)  # fmt: skip


def export_student(
    checkpoint,
    out,
    *,
    input_size=None,
    fp16=False,
    templates=None,
    threshold=0.0,
    background=(),
    fp16_weights=False,
    logit_scale=None,
    window=0,
    window_stride=0,
    negatives=None,
    resolve=expand_path,
    int8_text=False,
):
    """Export a CLIP-S4 training checkpoint: the student image graph + the teacher's
    text graph + metadata (kind clip-s4, known classes, teacher provenance, config hash).
    ``resolve`` maps the teacher paths the checkpoint records to files (a checkout's
    ``train.resolve_path`` also finds its toy assets from any folder)."""
    from clips4rt.export.clip_loader import activation, load_clip
    from clips4rt.export.dense_clip import CLIPText
    from clips4rt.export.student import UInt8Input, build_student

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)  # weights_only: refuses files that could run code
    if "model_hash" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a clips4rt training checkpoint (python -m train)")
    cfg = student_config(ckpt, path)
    model, name, mean, std = load_clip(
        cfg["clip"], resolve(cfg["pretrained"]), resolve(cfg["model_config"])
    )
    # the statistics the student was trained with (the teacher's, recorded in the
    # checkpoint): the bundle normalises pixels exactly as training did
    mean = tuple(float(v) for v in ckpt["teacher"].get("mean", mean))
    std = tuple(float(v) for v in ckpt["teacher"].get("std", std))
    student = build_student(
        cfg["backbone"],
        int(model.visual.output_dim),
        model.visual,
        cfg["stride"],
        cfg["decoder_width"],
        norm=cfg["decoder_norm"],
        top_stride=cfg["top_stride"],
    )
    student.load_state_dict(ckpt["model"])
    image = UInt8Input(student.eval(), mean, std)
    templates = templates or cfg["templates"]
    info = _clip_info(
        model,
        mean,
        std,
        templates,
        threshold,
        background,
        logit_scale,
        () if negatives is None else negatives,  # () = its known classes, at run time
        kind="clip-s4",
        window=int(window or 0),
        window_stride=int(window_stride or 0),
        stride=int(student.stride),
        input_size=int(input_size or cfg["teacher_size"]),
        known_classes=tuple(ckpt["teacher"]["known_classes"]),
        provenance={
            "teacher": name,
            "pretrained": cfg["pretrained"],
            "steps": int(ckpt["step"]),
            "config_hash": ckpt["model_hash"],
            "backbone": cfg["backbone"],
            "checkpoint": path.name,
            "activation": activation(model),
        },
    )
    return export_bundle(image, CLIPText(model), out, info, fp16=fp16, fp16_weights=fp16_weights,
                         int8_text=int8_text)  # fmt: skip
