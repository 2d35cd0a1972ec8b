"""Export to the runtime's bundle (DESIGN.md's ONNX contract): a CLIP-S4 training
checkpoint or any open_clip CLIP in a training-free dense mode -> image graph + text
graph + metadata, each graph checked against torch in onnxruntime (``graphs``); and
``default_bundle``, which rebuilds the toy model embedded in ``clips4rt``.

    python -m train.export --checkpoint runs/toy/step_0000500.pt -o student.onnx
    python -m train.export.default_bundle --checkpoint runs/toy/step_0000500.pt --force
"""

from train.export.cli import main
from train.export.graphs import (
    export_bundle,
    export_dense_clip,
    export_student,
    store_weights_fp16,
)

__all__ = ["export_bundle", "export_dense_clip", "export_student", "main", "store_weights_fp16"]
