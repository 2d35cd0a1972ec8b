"""Running on an accelerator: post-processing inside onnxruntime, and provider settings.

On a GPU provider the C++ post-processing would first copy the (B, D, h, w) float32
embeddings to the host; at 1080p that copy and the host matching cost more than the
graph. ``GraphMatcher`` instead runs the image graph with its output bound on the
device (IOBinding) and feeds it straight into ``models/match.onnx``, a small graph with
the semantics of ``clips4rt.kernels.match_upsample`` (cosines, bilinear upsampling to
the frame, argmax, winning cosine and probability, background rule), so only the
(H, W) labels, scores and probabilities come back. ``Segmenter`` uses it by default on
CUDA/TensorRT providers (``postprocess="auto"``); ``postprocess="graph"`` forces it on
the CPU provider too (the test compares it with the C++ path there).

``provider_list`` turns provider names and TensorRT settings (fp16, engine cache,
dynamic-shape profiles for the bundle's working sizes) into onnxruntime's
``providers=`` argument, with a Jetson user's defaults: fp16 on, engines cached next to
the model, profiles covering the bundle's input size up to 4x its long side.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clips4rt import bundle as B
from clips4rt.errors import BundleError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
POSTPROCESS = ("auto", "cpu", "graph")


def match_graph() -> Path:
    """Path of the shipped matching graph (regenerate: python -m train.export.postprocess)."""
    return Path(str(resources.files("clips4rt") / "models" / "match.onnx"))


def device_type(providers) -> str:
    """The device onnxruntime puts the first provider's outputs on: "cuda" or "cpu"."""
    return "cuda" if providers and providers[0] in GPU_PROVIDERS else "cpu"


def trt_options(
    cache_dir: str | Path,
    stride: int,
    input_size: int,
    fp16: bool = True,
    max_side: int | None = None,
    opt_side: int | None = None,
) -> dict:
    """TensorRT provider options: fp16 kernels, an engine cache in ``cache_dir`` (built
    once, minutes, then loaded in seconds), and one dynamic-shape profile for the image
    input (batch 1) from one stride-sized patch up to ``max_side`` (default 4x
    ``input_size``, the working size's cap) per side, optimised for a square ``opt_side``
    frame (default ``input_size``; a bundle with sliding windows: its window)."""
    if max_side is not None and not (
        isinstance(max_side, int) and not isinstance(max_side, bool) and max_side > 0
    ):
        raise ValueError(f"trt_max_side must be a positive int (pixels) or None (4x the "
                         f"bundle's input size), got {max_side!r}")  # fmt: skip
    top = int(max_side or 4 * input_size)
    top -= top % stride
    if not stride <= input_size <= top:
        raise ValueError(f"TensorRT profile: need stride <= input_size <= max_side, got "
                         f"{stride}, {input_size}, {top}")  # fmt: skip
    opt = min(int(opt_side or input_size), top)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    name = B.IMAGE_INPUT
    return {
        "trt_fp16_enable": bool(fp16),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": f"{name}:1x{stride}x{stride}x3",
        "trt_profile_opt_shapes": f"{name}:1x{opt}x{opt}x3",
        "trt_profile_max_shapes": f"{name}:1x{top}x{top}x3",
    }


def provider_list(providers: list[str], trt: dict | None) -> list:
    """onnxruntime's ``providers=``: names, with TensorRT's options attached."""
    return [(p, trt) if p == "TensorrtExecutionProvider" and trt else p for p in providers]


class GraphMatcher:
    """Image graph -> (device-resident embeddings) -> match graph -> host results."""

    def __init__(self, image: ort.InferenceSession, providers: list[str], options):
        self.image = image
        self.device = device_type(providers)
        # TensorRT would build an engine per new frame size for this small graph: CUDA runs it
        match_providers = [p for p in providers if p != "TensorrtExecutionProvider"]
        try:
            self.match = ort.InferenceSession(
                str(match_graph()), options, providers=match_providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises private types
            raise BundleError(f"{match_graph()}: cannot load the matching graph ({e}); "
                              "reinstall clips4rt") from e  # fmt: skip

    def run(self, batch, protos, size, logit_scale, n_classes, threshold) -> tuple:
        """uint8 (B, h', w', 3) working-size frames -> labels int32, scores, probs float32
        (B, H, W) at ``size`` = (H, W)."""
        bind = self.image.io_binding()
        bind.bind_cpu_input(B.IMAGE_INPUT, np.ascontiguousarray(batch))
        bind.bind_output(B.IMAGE_OUTPUT, self.device)
        self.image.run_with_iobinding(bind)
        emb = bind.get_outputs()[0]  # an OrtValue on the device: no copy to the host
        return self._match(emb, protos, size, logit_scale, n_classes, threshold)

    def run_embeddings(self, emb, protos, size, logit_scale, n_classes, threshold) -> tuple:
        """The match graph alone, on host embeddings float32 (B, D, h, w) (sliding
        windows average them on the host)."""
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(emb, np.float32))
        return self._match(value, protos, size, logit_scale, n_classes, threshold)

    def _match(self, emb, protos, size, logit_scale, n_classes, threshold) -> tuple:
        mb = self.match.io_binding()
        mb.bind_ortvalue_input("embeddings", emb)
        mb.bind_cpu_input("prototypes", np.ascontiguousarray(protos, np.float32))
        mb.bind_cpu_input("size", np.asarray(size, np.int64))
        mb.bind_cpu_input("logit_scale", np.asarray(logit_scale, np.float32))
        mb.bind_cpu_input("n_classes", np.asarray(n_classes, np.int64))
        mb.bind_cpu_input("threshold", np.asarray(threshold, np.float32))
        for name in ("labels", "scores", "probs"):
            mb.bind_output(name, "cpu")
        self.match.run_with_iobinding(mb)
        labels, scores, probs = mb.copy_outputs_to_cpu()
        return labels, scores, probs


def resolve_providers(providers: Sequence[str] | None) -> list[str]:
    """TensorRT/CUDA when onnxruntime-gpu sees them, then CPU; or the explicit list."""
    available = ort.get_available_providers()
    if providers is None:
        return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    unknown = [p for p in providers if p not in available]
    if unknown or not providers:
        raise ValueError(
            f"execution providers {unknown or providers} are not available in this "
            f"onnxruntime; available: {available}. For CUDA install onnxruntime-gpu."
        )
    return list(providers)
