"""Export to the runtime's bundle from a checkout. The export itself ships in the wheel
as ``clips4rt.export`` (``clips4rt export``); this package adds what only a checkout
has: the toy assets found from any folder (``train.resolve_path``), ``default_bundle``
(rebuilds the toy model embedded in ``clips4rt``), ``calibrate`` (absolute scores on
VOC-style data) and ``postprocess`` (the on-device match graph).

    python -m train.export --checkpoint runs/toy/step_0000500.pt -o student.onnx
    python -m train.export.default_bundle --checkpoint runs/toy/step_0000500.pt --force
"""

from clips4rt.export import cli
from clips4rt.export.graphs import export_bundle, export_dense_clip, store_weights_fp16
from clips4rt.export.graphs import export_student as _export_student
from train import resolve_path


def export_student(checkpoint, out, **kw):
    """``clips4rt.export.graphs.export_student`` with the checkout's path resolution."""
    kw.setdefault("resolve", resolve_path)
    return _export_student(checkpoint, out, **kw)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, prog="python -m train.export", resolve=resolve_path)


__all__ = ["export_bundle", "export_dense_clip", "export_student", "main", "store_weights_fp16"]
