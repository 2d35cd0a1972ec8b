"""The post-processing graph the runtime runs on a GPU provider (``clips4rt/models/
match.onnx``): prototype matching with bilinear upsampling to the frame, as ONNX, so the
pixel embeddings never leave the device. One graph for every bundle (D, K and the sizes
are dynamic); the runtime ships it, this module regenerates it:

    python -m train.export.postprocess            # -> clips4rt/models/match.onnx

Semantics = ``clips4rt.kernels.match_upsample`` (its docstring): cosines on the grid,
bilinear resize to the frame (half-pixel centres, as ``align_corners=False``), argmax
(the first index on ties), the winning cosine, the winner's softmax probability, and
the background rule (label -1 past ``n_classes`` or under ``threshold``).

Inputs: ``embeddings`` float32 (B, D, h, w), ``prototypes`` float32 (K, D), ``size``
int64 (2,) = (H, W), ``logit_scale`` float32 (), ``n_classes`` int64 (), ``threshold``
float32 (). Outputs: ``labels`` int32 (B, H, W), ``scores`` and ``probs`` float32
(B, H, W).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

import clips4rt

OUT = Path(clips4rt.__file__).resolve().parent / "models" / "match.onnx"
OPSET = 17


def build() -> onnx.ModelProto:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("embeddings", f, ["B", "D", "h", "w"]),
        helper.make_tensor_value_info("prototypes", f, ["K", "D"]),
        helper.make_tensor_value_info("size", i64, [2]),
        helper.make_tensor_value_info("logit_scale", f, []),
        helper.make_tensor_value_info("n_classes", i64, []),
        helper.make_tensor_value_info("threshold", f, []),
    ]
    outputs = [
        helper.make_tensor_value_info("labels", TensorProto.INT32, ["B", "H", "W"]),
        helper.make_tensor_value_info("scores", f, ["B", "H", "W"]),
        helper.make_tensor_value_info("probs", f, ["B", "H", "W"]),
    ]
    consts = [
        helper.make_tensor("axes1", i64, [1], [1]),
        helper.make_tensor("start0", i64, [1], [0]),
        helper.make_tensor("end2", i64, [1], [2]),
        helper.make_tensor("minus1", TensorProto.INT32, [], [-1]),
    ]
    n = helper.make_node
    nodes = [
        # cosines on the grid: (B, K, h, w)
        n("Einsum", ["prototypes", "embeddings"], ["cos"], equation="kd,bdhw->bkhw"),
        # target sizes (B, K, H, W)
        n("Shape", ["cos"], ["cos_shape"]),
        n("Slice", ["cos_shape", "start0", "end2"], ["bk"]),
        n("Concat", ["bk", "size"], ["sizes"], axis=0),
        n(
            "Resize",
            ["cos", "", "", "sizes"],
            ["s"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),  # fmt: skip
        n("ArgMax", ["s"], ["arg"], axis=1, keepdims=0, select_last_index=0),
        n("ReduceMax", ["s"], ["top"], axes=[1], keepdims=1),  # axes an attribute until opset 18
        n("Squeeze", ["top", "axes1"], ["scores"]),
        # probability of the winner: 1 / sum_k exp(scale * (s_k - max))
        n("Sub", ["s", "top"], ["d"]),
        n("Mul", ["d", "logit_scale"], ["z"]),
        n("Exp", ["z"], ["e"]),
        n("ReduceSum", ["e", "axes1"], ["den"], keepdims=0),
        n("Reciprocal", ["den"], ["probs"]),
        # background: -1 past the class names or under the threshold
        n("GreaterOrEqual", ["arg", "n_classes"], ["past"]),
        n("Less", ["probs", "threshold"], ["weak"]),
        n("Or", ["past", "weak"], ["bg"]),
        n("Cast", ["arg"], ["arg32"], to=TensorProto.INT32),
        n("Where", ["bg", "minus1", "arg32"], ["labels"]),
    ]
    graph = helper.make_graph(nodes, "clips4rt_match", inputs, outputs, initializer=consts)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="clips4rt"
    )
    model.ir_version = 8  # onnxruntime >= 1.17 reads it
    model.doc_string = "clips4rt matching + bilinear upsampling (train/export/postprocess.py)"
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export.postprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.write_bytes(build().SerializeToString())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
