"""ONNX models and model repositories made by the tests themselves (with onnx.helper)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

#: The example repository the README serves.
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "model_repository")
IR_VERSION = 9  # what current onnxruntime releases read
OPSET = 17

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
    "BF16": TensorProto.BFLOAT16,
}


def save_model(graph, path: str) -> str:  # type: ignore[no-untyped-def]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save(model, path)
    return path


def identity_graph(datatype: str = "FP32", shape: Sequence[int | str] = ("batch", 16), in_name: str = "INPUT0",
                   out_name: str = "OUTPUT0"):  # type: ignore[no-untyped-def]
    x = helper.make_tensor_value_info(in_name, ONNX_TYPES[datatype], list(shape))
    y = helper.make_tensor_value_info(out_name, ONNX_TYPES[datatype], list(shape))
    return helper.make_graph([helper.make_node("Identity", [in_name], [out_name])], "identity", [x], [y])


def add_sub_graph(datatype: str = "FP32", shape: Sequence[int | str] = ("batch", 16)):  # type: ignore[no-untyped-def]
    t = ONNX_TYPES[datatype]
    inputs = [helper.make_tensor_value_info(n, t, list(shape)) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, t, list(shape)) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return helper.make_graph(nodes, "add_sub", inputs, outputs)


def mlp_graph(sizes: Sequence[int] = (256, 1024, 1024, 256), seed: int = 0):  # type: ignore[no-untyped-def]
    """A ReLU MLP with random weights; returns (graph, weights) so tests can compute the expected output."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights = [], [], []
    prev = "INPUT0"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.01).astype(np.float32)
        weights.append((w, bias))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        last = i == len(sizes) - 2
        out = "OUTPUT0" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])
    return helper.make_graph(nodes, "mlp", [x], [y], initializer=inits), weights


def mlp_reference(x: np.ndarray, weights) -> np.ndarray:  # type: ignore[no-untyped-def]
    for i, (w, b) in enumerate(weights):
        x = x @ w + b
        if i < len(weights) - 1:
            x = np.maximum(x, 0)
    return x


def write_model(repo: str, name: str, graph=None, config: str | None = None, version: int = 1,
                filename: str = "model.onnx") -> str:  # type: ignore[no-untyped-def]
    """Add a model to a repository folder: an ONNX file (when ``graph``) and a config.pbtxt (when ``config``)."""
    model_dir = os.path.join(repo, name)
    os.makedirs(os.path.join(model_dir, str(version)), exist_ok=True)
    if graph is not None:
        save_model(graph, os.path.join(model_dir, str(version), filename))
    if config is not None:
        with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
            f.write(config)
    return model_dir


ADD_SUB_CONFIG = """
    name: "add_sub"
    backend: "onnxruntime"
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
            { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
             { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""


def write_add_sub(repo: str) -> str:
    """Triton's classic ``add_sub`` (INT32 [batch, 16]; OUTPUT0 = sum, OUTPUT1 = difference) with its config."""
    return write_model(repo, "add_sub", add_sub_graph("INT32", ("batch", 16)), config=ADD_SUB_CONFIG)


def sleep_then_echo(seconds: float | None = None) -> str:
    """A Python-backend ``model.py`` that echoes INPUT0 as OUTPUT0 after sleeping: ``seconds`` once per execute,
    or, when ``None``, as many seconds as each request's first input element says (so tests know exactly
    how long an instance is held)."""
    if seconds is None:
        wait = "time.sleep(float(x.reshape(-1)[0]))"
        head = ""
    else:
        wait = ""
        head = f"time.sleep({seconds!r})"
    return f'''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        {head or "pass"}
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            {wait or "pass"}
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
'''


def timed_model(seconds: float) -> str:
    """A Python-backend ``model.py`` that sleeps ``seconds`` per execute and answers each request's OUT with
    ``[instance name, start, end]`` (wall clock, JSON): tests see which instance ran and how executions overlapped."""
    return f'''
import json, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        start = time.time()
        time.sleep({seconds!r})
        end = time.time()
        out = np.array([json.dumps([self.name, start, end]).encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
'''


def echo_config(max_batch_size: int, count: int = 1, extra: str = "") -> str:
    """config.pbtxt of a Python FP32 echo model (INPUT0 → OUTPUT0): dims [1] when batching, else [-1]."""
    dims = "[ 1 ]" if max_batch_size > 0 else "[ -1 ]"
    return f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
        instance_group [ {{ kind: KIND_CPU count: {count} }} ]
        {extra}"""


def write_python_model(repo: str, name: str, code: str, config: str, version: int = 1) -> str:
    """Add a Python-backend model (``<version>/model.py`` and ``config.pbtxt``) to a repository folder."""
    model_dir = os.path.join(repo, name)
    os.makedirs(os.path.join(model_dir, str(version)), exist_ok=True)
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(config)
    with open(os.path.join(model_dir, str(version), "model.py"), "w") as f:
        f.write(code)
    return model_dir


def copy_examples(repo: str, *names: str) -> None:
    """Copy models of the example repository into a test repository."""
    for name in names:
        shutil.copytree(os.path.join(EXAMPLES, name), os.path.join(repo, name))
