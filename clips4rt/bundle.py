"""The bundle contract: what export writes into ``model.onnx`` and the runtime reads.

A bundle is two ONNX files side by side:

- ``model.onnx``: image graph, input ``image`` uint8 (B, H, W, 3) RGB, output
  ``embeddings`` float32 (B, D, H/stride, W/stride), unit length along D. The
  metadata below lives in its ``metadata_props``, one key ``clips4rt.<field>`` per
  field, each value JSON.
- the text graph (``text_model``): input ``tokens`` int32 (N, context_length),
  output ``text_embeddings`` float32 (N, D), unit length. Its sha256 is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clips4rt.errors import BundleError
from clips4rt.prompts import IMAGENET_TEMPLATES

FORMAT_VERSION = 1
PREFIX = "clips4rt."
KINDS = ("clip-s4", "maskclip", "clearclip", "sclip")
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
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    context_length: int = 77
    prompt_templates: tuple[str, ...] = IMAGENET_TEMPLATES
    background_threshold: float = 0.0  # winner softmax probability under this -> -1
    background_classes: tuple[str, ...] = ()  # pixels won by these -> -1
    known_classes: tuple[str, ...] = ()  # class names used in training (clip-s4)
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
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
                "Export one with `python -m train.export`."
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
                "`python -m train.export`, or install the clips4rt that wrote it."
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
        for k in ("mean", "std", "prompt_templates", "background_classes", "known_classes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        info = cls(**kw)
        if info.kind not in KINDS:
            raise BundleError(f"{source}: unknown kind {info.kind!r}, expected one of {KINDS}")
        if info.stride < 1 or info.embed_dim < 1 or info.input_size < info.stride:
            raise BundleError(f"{source}: bad geometry in metadata ({info})")
        return info


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
