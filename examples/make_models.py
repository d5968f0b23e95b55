"""Builds the example ONNX models of ``examples/model_repository`` (needs the ``onnx`` package).

The generated files are committed (they are a few hundred bytes), so serving the
examples needs no build step; run this to regenerate them:

    python examples/make_models.py
"""

from __future__ import annotations

import os
import sys

from onnx import TensorProto, helper, save

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "model_repository")
#: ONNX IR version that current onnxruntime releases read.
IR_VERSION = 9
OPSET = 17


def _save(graph, path: str) -> None:  # type: ignore[no-untyped-def]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    model.producer_name = "tritium-examples"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save(model, path)


def identity() -> None:
    """identity_fp32: OUTPUT0 = INPUT0, FP32 [batch, 16]; no config.pbtxt (auto-completed)."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity", [x], [y])
    _save(graph, os.path.join(REPO, "identity_fp32", "1", "model.onnx"))


def simple() -> None:
    """simple: Triton's classic example; OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [batch, 16]."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    _save(helper.make_graph(nodes, "simple", inputs, outputs), os.path.join(REPO, "simple", "1", "model.onnx"))


if __name__ == "__main__":
    identity()
    simple()
    sys.stdout.write(f"wrote example models under {REPO}\n")
