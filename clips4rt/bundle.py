"""The bundle contract: what export writes into ``model.onnx`` and the runtime reads.

A bundle is two ONNX files side by side:

- ``model.onnx``: image graph, input ``image`` uint8 (B, H, W, 3) RGB, output
  ``embeddings`` float32 (B, D, H/stride, W/stride), unit length along D. The
  metadata below lives in its ``metadata_props``, one key ``clips4rt.<field>`` per
  field, each value JSON.
- the text graph (``text_model``): input ``tokens`` int32 (N, L), zero-padded token
  rows, output ``text_embeddings`` float32 (N, D), unit length. Its sha256 is recorded.
  L is a dynamic axis (any length up to context_length that keeps every row's end
  token: the runtime cuts padding) or, in graphs exported before it, fixed at
  context_length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clips4rt.errors import BundleError
from clips4rt.prompts import IMAGENET_TEMPLATES, MAX_NAME_CHARS
from clips4rt.tokenizer import tokenize

FORMAT_VERSION = 1
PREFIX = "clips4rt."
#: CLIP's (OpenAI's) preprocessing statistics, 0-1 RGB: the bundle default; a teacher
#: with other statistics carries its own (``model.visual.preprocess_cfg``)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: ``kind`` names how the image graph was made ("clip-s4" for a trained student, else
#: the teacher's dense mode, e.g. "sclip"); informative only: the runtime never branches
#: on it, so new dense modes need no runtime change
KIND_PATTERN = r"[a-z][a-z0-9_.+-]{0,31}"
IMAGE_INPUT, IMAGE_OUTPUT = "image", "embeddings"
TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_embeddings"


@dataclass(frozen=True)
class BundleInfo:
    """Metadata of a bundle (see the module docstring for the graphs)."""

    kind: str
    embed_dim: int
    stride: int
    input_size: int  # default short side, in pixels, the image is resized to
    logit_scale: float
    text_model: str  # file name, relative to the image graph's folder
    text_model_sha256: str
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    context_length: int = 77
    prompt_templates: tuple[str, ...] = IMAGENET_TEMPLATES
    background_threshold: float = 0.0  # winner softmax probability under this -> -1
    background_classes: tuple[str, ...] = ()  # pixels won by these -> -1
    known_classes: tuple[str, ...] = ()  # class names used in training (clip-s4)
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    # sliding-window default (clips4rt.window), pixels at the working size: 0 = one pass
    # over the whole image; stride 0 = half the window. Bundles written before these
    # fields read as 0 (whole image), and older runtimes ignore them.
    window: int = 0
    window_stride: int = 0
    # the negative vocabulary (clips4rt.negatives): names a query is contrasted with, whose
    # pixels become -1; empty = the known classes (a CLIP-S4 student's). A negative whose
    # prompt embedding is this close (cosine) to a query name is dropped for that query.
    negative_classes: tuple[str, ...] = ()
    negative_max_cosine: float = 0.9
    # absolute per-class score sigmoid(score_scale * cosine + score_bias), fitted on
    # held-out data by `python -m train.export.calibrate`; scale 0 = not calibrated
    score_scale: float = 0.0
    score_bias: float = 0.0
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[str, str]:
        """``metadata_props`` entries: {"clips4rt.<field>": JSON value}."""
        return {PREFIX + k: json.dumps(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> BundleInfo:
        """Parse and validate ``metadata_props``; BundleError names what is wrong."""
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise BundleError(
                f"{source} has no clips4rt metadata: it is a plain ONNX model, not a bundle. "
                "Export one with `clips4rt export`."
            )
        try:
            values = {k: json.loads(v) for k, v in ours.items()}
        except json.JSONDecodeError as e:
            raise BundleError(f"{source}: metadata value is not JSON ({e})") from e
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{source} has bundle format version {version!r}; this clips4rt reads "
                f"version {FORMAT_VERSION}. Re-export the model with this version's "
                "`clips4rt export`, or install the clips4rt that wrote it."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values and f.default is dataclasses.MISSING
        )
        if missing:
            raise BundleError(f"{source}: metadata lacks {missing}; re-export the bundle")
        kw = {k: v for k, v in values.items() if k in names}
        for k, v in kw.items():
            problem = check_field(k, v)
            if problem:
                raise BundleError(
                    f"{source}: metadata field {k!r} = {_short(v)} {problem}; the bundle is "
                    "damaged or was edited by hand: re-export it with `clips4rt export`"
                )
        for k in ("mean", "std", "prompt_templates", "background_classes", "known_classes",
                  "negative_classes"):  # fmt: skip
            if k in kw:
                kw[k] = tuple(kw[k])
        info = cls(**kw)
        if info.input_size < info.stride:
            raise BundleError(
                f"{source}: input_size {info.input_size} is smaller than the stride "
                f"{info.stride}; re-export the bundle"
            )
        if (
            info.window % info.stride
            or info.window_stride % info.stride
            or (info.window_stride > info.window)
        ):
            raise BundleError(
                f"{source}: window {info.window} / window_stride {info.window_stride} are not "
                f"multiples of the stride {info.stride} with window_stride <= window; "
                "re-export the bundle"
            )
        return info


# Bounds of the metadata the runtime accepts: each value is checked for type and range
# at load, so that a damaged or hand-edited bundle fails there with a BundleError,
# not later inside onnxruntime or as NaN scores.
LIMITS = {
    "embed_dim": (1, 1 << 16),
    "stride": (1, 1024),
    "input_size": (1, 8192),
    "window": (0, 8192),
    "window_stride": (0, 8192),
    "context_length": (1, 4096),
    "logit_scale": (1e-3, 1e4),
    "background_threshold": (0.0, 1.0),
    "negative_max_cosine": (0.0, 1.0),
    "score_scale": (0.0, 1e4),
    "score_bias": (-1e4, 1e4),
    "mean": (-10.0, 10.0),
    "std": (1e-6, 100.0),
}
MAX_NAMES = 100_000  # entries of a name / template list


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _number(v, integer: bool) -> bool:
    if isinstance(v, bool):
        return False
    if integer:
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


def _names(v, template: bool = False) -> str | None:
    if not isinstance(v, list) or len(v) > MAX_NAMES:
        return f"is not a list of at most {MAX_NAMES} strings"
    for x in v:
        if not isinstance(x, str) or not 0 < len(x) <= MAX_NAME_CHARS:
            return f"holds {_short(x)}, not a string of 1..{MAX_NAME_CHARS} characters"
        if template and x.count("{}") != 1:
            return f"holds the template {_short(x)} without exactly one '{{}}'"
    return None


def check_field(k: str, v) -> str | None:
    """Why metadata value ``v`` of field ``k`` is unacceptable (None = fine)."""
    if k in ("embed_dim", "stride", "input_size", "context_length", "format_version", "window",
             "window_stride"):  # fmt: skip
        if not _number(v, True):
            return "is not an integer"
    if k in ("logit_scale", "background_threshold", "negative_max_cosine", "score_scale",
             "score_bias") and not _number(v, False):  # fmt: skip
        return "is not a finite number"
    if k in LIMITS and k not in ("mean", "std"):
        lo, hi = LIMITS[k]
        if not lo <= v <= hi:
            return f"is outside [{lo}, {hi}]"
    if k in ("mean", "std"):
        lo, hi = LIMITS[k]
        if not (
            isinstance(v, list) and len(v) == 3 and all(_number(x, False) for x in v)
        ) or not all(lo <= x <= hi for x in v):
            return f"is not 3 finite numbers in [{lo}, {hi}]"
    if k == "kind" and not (isinstance(v, str) and re.fullmatch(KIND_PATTERN, v)):
        return f"is not a name of the form {KIND_PATTERN} (e.g. 'clip-s4', 'sclip')"
    if k == "text_model":
        if not isinstance(v, str) or not v or v in (".", "..") or Path(v).name != v:
            return "is not a plain file name"
        if "/" in v or "\\" in v or "\0" in v or ":" in v:
            return "is not a plain file name (the text graph must sit beside the image graph)"
    if k == "text_model_sha256" and not (
        isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    ):
        return "is not a sha256 hex digest"
    if k in ("background_classes", "known_classes", "negative_classes"):
        return _names(v)
    if k == "prompt_templates":
        return _names(v, template=True) or (None if v else "is empty")
    if k == "precision" and v not in ("fp32", "fp16", "int8"):
        return "is not one of fp32, fp16, int8"
    if k == "provenance" and not isinstance(v, dict):
        return "is not a JSON object"
    return None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_graph(sess, name: str, x, path) -> Any:
    """One graph run; onnxruntime's own exception types become a BundleError that
    names the bundle (the inputs were checked, so a failure is the graph's)."""
    try:
        return sess.run(None, {name: x})[0]
    except Exception as e:  # onnxruntime raises private pybind types
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        raise BundleError(
            f"{path}: onnxruntime failed on the {'image' if name == IMAGE_INPUT else 'text'}"
            f" graph with input {x.dtype}{list(x.shape)} ({type(e).__name__}: "
            f"{str(e)[:300]}); the bundle's graphs and metadata disagree or memory ran "
            "out. Re-export the bundle, or pass a smaller size."
        ) from e


def check_graphs(image, text, info: BundleInfo, path, probe: bool = True) -> None:
    """The two graphs' inputs, outputs and fixed dimensions against the contract and the
    metadata; with ``probe``, one 4x4-token image and one prompt run through them (ms)
    to check the stride and widths. BundleError naming the fix otherwise."""
    for sess, name, inp, out in (
        (image, "image graph", IMAGE_INPUT, IMAGE_OUTPUT),
        (text, "text graph", TEXT_INPUT, TEXT_OUTPUT),
    ):
        ins = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]
        if ins != [inp] or outs[:1] != [out]:
            raise BundleError(
                f"{name} has inputs {ins} / outputs {outs}; the bundle contract wants "
                f"{[inp]} / {[out]}. Re-export the bundle."
            )
    # fixed dimensions the graphs declare must agree with the metadata
    checks = (
        ("image graph output", image.get_outputs()[0].shape, 1, info.embed_dim,
         "embed_dim"),
        ("text graph output", text.get_outputs()[0].shape, 1, info.embed_dim,
         "embed_dim"),
        ("text graph input", text.get_inputs()[0].shape, 1, info.context_length,
         "context_length"),
    )  # fmt: skip
    for what, shape, axis, want, key in checks:
        dim = shape[axis] if len(shape) > axis else None
        if isinstance(dim, int) and dim != want:
            raise BundleError(
                f"{path}: the {what} has {dim} along axis {axis} but the metadata "
                f"says {key} = {want}; re-export the bundle"
            )
    if image.get_inputs()[0].type != "tensor(uint8)":
        raise BundleError(
            f"{path}: the image graph takes {image.get_inputs()[0].type}, the "
            "bundle contract uint8 RGB; re-export the bundle"
        )
    if not probe:
        return
    # one 4x4-token image through the graph (ms): the grid must follow the stride
    s = info.stride
    grid = run_graph(image, IMAGE_INPUT, np.zeros((1, 4 * s, 4 * s, 3), np.uint8),
                      path)  # fmt: skip
    if grid.shape != (1, info.embed_dim, 4, 4):
        raise BundleError(
            f"{path}: a {4 * s}x{4 * s} image gives embeddings {list(grid.shape)}, but "
            f"the metadata says stride {s}, embed_dim {info.embed_dim} (expected "
            f"[1, {info.embed_dim}, 4, 4]); re-export the bundle"
        )
    # one text prompt through the graph (ms): its width must be embed_dim
    probe = run_graph(text, TEXT_INPUT, tokenize(["a"], info.context_length), path)
    if probe.ndim != 2 or probe.shape[1] != info.embed_dim:
        raise BundleError(
            f"{path}: the text graph gives {list(probe.shape)} embeddings but the "
            f"metadata says embed_dim = {info.embed_dim}; re-export the bundle"
        )
