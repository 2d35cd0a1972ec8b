"""Export to the runtime's bundle (image graph + text graph + metadata), from a pip
install: ``pip install "clips4rt[export]"`` (torch, open_clip, onnx), then
``clips4rt export ...``. Importing ``clips4rt`` never imports this package (nor torch);
``clips4rt.hub`` uses it to build named models once, into a cache.

- ``graphs``: export an open_clip CLIP in a training-free dense mode, or a CLIP-S4
  student checkpoint; each graph is checked against torch in onnxruntime.
- ``dense_clip``: the dense modes (MaskCLIP, SCLIP, ClearCLIP) as their papers' code.
- ``clip_loader``: open_clip by name + pretrained tag, a local checkpoint or a config.
- ``student``: the CLIP-S4 student architectures; ``checkpoint``: safe loading.
- ``quantize``: int8 image graphs; ``cli``: the command line.
"""

MISSING = (
    "exporting a model needs torch, open_clip and onnx, which the runtime install does "
    'not have: pip install "clips4rt[export]"'
)


def require() -> None:
    """Raise ImportError naming the extra to install when the export stack is missing."""
    import importlib.util

    def have(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    missing = [m for m in ("torch", "open_clip", "onnx") if not have(m)]
    if missing:
        raise ImportError(f"{MISSING} (missing: {', '.join(missing)})")
