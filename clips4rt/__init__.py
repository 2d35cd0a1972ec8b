"""clips4rt: open-vocabulary semantic segmentation (CLIP-S4) on onnxruntime.

    import clips4rt
    seg = clips4rt.Segmenter("model.onnx")  # or Segmenter(): the embedded toy model
    result = seg.run("photo.jpg", ["cat", "dog", "sofa"])
    result.labels  # (H, W) int32 index into the classes, -1 = background

Depends on numpy, onnxruntime and pillow only.
"""

from clips4rt import visualize
from clips4rt.bundle import FORMAT_VERSION, BundleInfo
from clips4rt.errors import BundleError, ImageError, VideoError
from clips4rt.fewshot import Head, fit_head
from clips4rt.images import load_image
from clips4rt.segmenter import SegmentationResult, Segmenter, default_model
from clips4rt.tokenizer import tokenize

__version__ = "0.1.0"
__all__ = [
    "FORMAT_VERSION",
    "BundleError",
    "BundleInfo",
    "Head",
    "ImageError",
    "SegmentationResult",
    "Segmenter",
    "VideoError",
    "default_model",
    "fit_head",
    "load_image",
    "tokenize",
    "visualize",
]
