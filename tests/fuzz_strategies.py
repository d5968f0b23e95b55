"""Hypothesis strategies for the decoders' inputs: valid requests, then one or two mutations.

Structured rather than random bytes, so examples get past the first check: a field replaced by other JSON
or dropped, a size or header length off by some bytes, a BYTES length prefix made huge, bytes flipped or
cut.  Used by ``tests/unit/test_fuzz_decoders.py`` and ``tests/e2e/test_fuzz_http.py``.
"""

from __future__ import annotations

import base64
import json
import re
import struct

import numpy as np
from hypothesis import strategies as st

from tritium._proto import grpc_service_pb2 as pb
from tritium.config.parse import parse_config_text
from tritium.core.bytes_codec import serialize_bytes_tensor
from tritium.core.types import DataType
from tritium.frontends.grpc import codec as grpc_codec

#: The model config requests are checked against (``fuzz_targets.MODELS``), with %d for max_batch_size.
MODEL_CONFIG = """
name: "m"
max_batch_size: %d
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 2 ] },
  { name: "INPUT2" data_type: TYPE_INT8 dims: [ 2, -1 ] reshape: { shape: [ -1, 2 ] } },
  { name: "INPUT3" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "INPUT4" data_type: TYPE_UINT64 dims: [ 1, 1 ] optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }
]
"""


# -- building blocks -----------------------------------------------------------------------------------

WIRE_TYPES = [t.wire_name for t in DataType]
NAMES = ["INPUT0", "INPUT1", "INPUT2", "INPUT3", "INPUT4", "OUTPUT0", "x", ""]
#: Dimensions that break naive code: zero, the int32/int64/uint64 edges, and 2**40.
EDGE_DIMS = [0, 1, 2, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63)]
#: BYTES length prefixes that break naive code.
EDGE_LENGTHS = [0, 1, 3, 2**16, 2**31 - 1, 2**31, 2**32 - 1]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
names = st.sampled_from(NAMES) | st.text(max_size=8)
datatypes = st.sampled_from(WIRE_TYPES) | st.text(max_size=6)
dims = st.integers(0, 3) | st.sampled_from(EDGE_DIMS)
shapes = st.lists(dims, max_size=4) | st.lists(st.integers(0, 1), min_size=62, max_size=70)


def dumps(doc) -> bytes:
    """JSON text of any document (stdlib: integers beyond 64 bits too)."""
    return json.dumps(doc).encode()


@st.composite
def tensors(draw, datatype=None):
    """(name, datatype, shape, numpy data) of a valid tensor of a small shape."""
    dtype = DataType.from_wire(draw(st.sampled_from(WIRE_TYPES))) if datatype is None else datatype
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = int(np.prod(shape)) if shape else 1
    if dtype is DataType.BYTES:
        items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = items
    else:
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        array = np.frombuffer(raw, dtype=dtype.numpy_dtype).copy()
    return draw(names), dtype, shape, array.reshape(shape)


def _json_data(dtype: DataType, array: np.ndarray):
    if dtype is DataType.BYTES:
        return [b.decode("utf-8", "replace") for b in array.reshape(-1)]
    flat = array.reshape(-1)
    if dtype in (DataType.FP16, DataType.BF16, DataType.FP32, DataType.FP64):
        flat = flat.astype(np.float64)
        flat[~np.isfinite(flat)] = 0
    return flat.tolist()


def _raw(dtype: DataType, array: np.ndarray) -> bytes:
    return serialize_bytes_tensor(array) if dtype is DataType.BYTES else np.ascontiguousarray(array).tobytes()


@st.composite
def mutate_doc(draw, doc):
    """Replace, drop or add one field somewhere in a JSON document (0-2 times)."""
    for _ in range(draw(st.integers(0, 2))):
        paths = []

        def walk(node, path):
            paths.append(path)
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, path + (k,))
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, path + (i,))

        walk(doc, ())
        path = draw(st.sampled_from(paths))
        value = draw(json_values | st.sampled_from(EDGE_DIMS) | st.lists(st.sampled_from(EDGE_DIMS), max_size=3))
        if not path:
            doc = value
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.sampled_from(["data", "parameters", "binary_data_size",
                                                                "shared_memory_region", "shared_memory_offset",
                                                                "shared_memory_byte_size", "classification",
                                                                "binary_data", "binary_data_output", "id"]))] = value
        else:
            parent[path[-1]] = value
    return doc


@st.composite
def mutate_bytes(draw, data: bytes, rate: int = 3):
    """Flip, cut, insert or overwrite a few bytes (rarely: leave them)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, rate))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "u32"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if action == "flip" and data:
            pos = min(pos, len(data) - 1)
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "truncate":
            del data[pos:]
        elif action == "u32" and len(data) >= 4:
            pos = min(pos, len(data) - 4)
            data[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from(EDGE_LENGTHS)))
    return bytes(data)


# -- HTTP infer: JSON and the binary tensor extension ----------------------------------------------------

@st.composite
def infer_bodies(draw):
    """(body, Inference-Header-Content-Length) of a mostly valid request, mutated."""
    count = draw(st.integers(0, 3))
    doc: dict = {"inputs": []}
    blobs = []
    for _ in range(count):
        name, dtype, shape, array = draw(tensors())
        how = draw(st.sampled_from(["json", "binary", "binary", "shm"]))
        item: dict = {"name": name, "datatype": dtype.wire_name, "shape": shape}
        if how == "json":
            item["data"] = _json_data(dtype, array)
        elif how == "binary":
            blob = _raw(dtype, array)
            blob = draw(mutate_bytes(blob, 1)) if draw(st.booleans()) else blob
            blobs.append(blob)
            item["parameters"] = {"binary_data_size": len(blob) + draw(st.sampled_from([0, 0, 0, -1, 1, 4]))}
        else:
            item["parameters"] = {"shared_memory_region": draw(st.sampled_from(["r0", "nope"])),
                                  "shared_memory_offset": draw(st.integers(0, 70)),
                                  "shared_memory_byte_size": draw(st.integers(0, 70))}
        doc["inputs"].append(item)
    if draw(st.booleans()):
        doc["outputs"] = [{"name": draw(names), "parameters": draw(st.fixed_dictionaries(
            {}, optional={"binary_data": st.booleans(), "classification": st.integers(-1, 3),
                          "shared_memory_region": st.sampled_from(["r0", "nope"]),
                          "shared_memory_byte_size": st.integers(0, 70)}))} for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_output", "priority", "timeout", "k"]),
                                                 json_scalars, max_size=2))
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=5))
    doc = draw(mutate_doc(doc))
    header = dumps(doc)
    tail = b"".join(blobs)
    if not blobs and draw(st.booleans()):
        return draw(mutate_bytes(header)), None
    body = header + tail
    length = len(header) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(header), 2**31, len(tail) + 1]))
    if draw(st.integers(0, 3)) == 0:
        body = draw(mutate_bytes(body))
    return body, length


# -- BYTES -----------------------------------------------------------------------------------------------

@st.composite
def bytes_buffers(draw):
    items = draw(st.lists(st.binary(max_size=10), max_size=6))
    buffer = b"".join(struct.pack("<I", len(i)) + i for i in items)
    count = len(items) + draw(st.sampled_from([0, 0, 0, -1, 1, 2**30, 2**40]))
    return draw(mutate_bytes(buffer)), max(count, 0)


# -- gRPC ModelInferRequest -------------------------------------------------------------------------------

def _param(draw):
    kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param",
                                 None]))
    param = pb.InferParameter()
    if kind == "bool_param":
        param.bool_param = draw(st.booleans())
    elif kind == "int64_param":
        param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "string_param":
        param.string_param = draw(st.sampled_from(["r0", "nope", ""]) | st.text(max_size=4))
    elif kind == "double_param":
        param.double_param = draw(st.floats())
    elif kind == "uint64_param":
        param.uint64_param = draw(st.integers(0, 2**64 - 1))
    return param


PARAM_KEYS = ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size", "classification",
              "binary_data", "priority", "timeout", "k"]


@st.composite
def plain_grpc_messages(draw):
    """``ModelInferRequest`` as clients send them most: raw contents, no parameters (those get a plan)."""
    message = pb.ModelInferRequest(model_name=draw(st.sampled_from(["m", "another"])),
                                   model_version=draw(st.sampled_from(["", "1"])), id=draw(st.text(max_size=3)))
    for _ in range(draw(st.integers(1, 3))):
        name, dtype, shape, array = draw(tensors())
        message.inputs.add(name=name, datatype=dtype.wire_name, shape=shape)
        message.raw_input_contents.append(_raw(dtype, array))
    for _ in range(draw(st.integers(0, 2))):
        message.outputs.add(name=draw(names))
    return message.SerializeToString()


@st.composite
def grpc_messages(draw):
    message = pb.ModelInferRequest(model_name="m", id=draw(st.text(max_size=4)))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        name, dtype, shape, array = draw(tensors())
        item = message.inputs.add(name=name, datatype=draw(st.just(dtype.wire_name) | datatypes))
        shape = draw(st.just(shape) | st.lists(st.integers(-(2**63), 2**63 - 1) | st.sampled_from(EDGE_DIMS[:-2]
                                                                                                  + [-1]), max_size=4))
        item.shape.extend([d for d in shape if -(2**63) <= d < 2**63])
        for _ in range(draw(st.integers(0, 2))):
            item.parameters[draw(st.sampled_from(PARAM_KEYS))].CopyFrom(_param(draw))
        if use_raw:
            raw = _raw(dtype, array)
            message.raw_input_contents.append(draw(mutate_bytes(raw, 1)) if draw(st.booleans()) else raw)
        elif dtype in grpc_codec.CONTENTS_FIELD and draw(st.integers(0, 4)):
            field = grpc_codec.CONTENTS_FIELD[dtype]
            if draw(st.integers(0, 5)) == 0:
                field = draw(st.sampled_from(sorted(set(grpc_codec.CONTENTS_FIELD.values()))))
            values = getattr(item.contents, field)
            if field == "bytes_contents":
                values.extend(draw(st.lists(st.binary(max_size=4), max_size=5)))
            elif field == "bool_contents":
                values.extend(draw(st.lists(st.booleans(), max_size=5)))
            elif field in ("fp32_contents", "fp64_contents"):
                values.extend(draw(st.lists(st.floats(width=32 if field == "fp32_contents" else 64), max_size=5)))
            else:
                bits = {"int_contents": (-(2**31), 2**31 - 1), "int64_contents": (-(2**63), 2**63 - 1),
                        "uint_contents": (0, 2**32 - 1), "uint64_contents": (0, 2**64 - 1)}[field]
                values.extend(draw(st.lists(st.integers(*bits), max_size=5)))
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(names))
        for _ in range(draw(st.integers(0, 2))):
            output.parameters[draw(st.sampled_from(PARAM_KEYS))].CopyFrom(_param(draw))
    for _ in range(draw(st.integers(0, 2))):
        message.parameters[draw(st.sampled_from(PARAM_KEYS))].CopyFrom(_param(draw))
    if draw(st.integers(0, 3)) == 0:
        message.raw_input_contents.append(draw(st.binary(max_size=8)))
    data = message.SerializeToString()
    return draw(mutate_bytes(data)) if draw(st.integers(0, 2)) == 0 else data


# -- generate extension ---------------------------------------------------------------------------------

@st.composite
def generate_bodies(draw):
    doc = {}
    for name in draw(st.lists(st.sampled_from(["INPUT0", "INPUT1", "INPUT2", "INPUT3", "INPUT4"]), max_size=5,
                              unique=True)):
        doc[name] = draw(json_scalars | st.lists(json_scalars, max_size=6) | st.lists(
            st.integers(-300, 300) | st.sampled_from([2**63, 2**64 - 1, -(2**63) - 1]), max_size=6))
    for key in draw(st.lists(st.sampled_from(["id", "parameters", "priority", "timeout", "stream", "k"]),
                             max_size=3, unique=True)):
        doc[key] = draw(json_values)
    body = dumps(draw(mutate_doc(doc)))
    return draw(mutate_bytes(body)) if draw(st.integers(0, 4)) == 0 else body


# -- model configuration (config.pbtxt and JSON) ------------------------------------------------------------

CONFIG_SAMPLES = [
    MODEL_CONFIG % 4,
    'name: "m" backend: "onnxruntime" max_batch_size: 8 dynamic_batching { preferred_batch_size: [2, 4] '
    'priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 1 value { timeout_action: REJECT } } } '
    'input [{ name: "a" data_type: TYPE_FP32 dims: [2, -1] allow_ragged_batch: true }] '
    'output [{ name: "b" data_type: TYPE_FP32 dims: [-1] label_filename: "labels.txt" }] '
    'batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "c" data_type: TYPE_INT32 source_input: "a" }] '
    'instance_group [{ kind: KIND_CPU count: 2 }]',
    'name: "m" backend: "python" max_batch_size: 2 sequence_batching { max_sequence_idle_microseconds: 100 '
    'oldest { max_candidate_sequences: 4 preferred_batch_size: [2] } control_input [{ name: "START" control '
    '[{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }] }, { name: "ID" control '
    '[{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }] }] state [{ input_name: "s_in" output_name: '
    '"s_out" data_type: TYPE_FP32 dims: [1] initial_state { name: "z" data_type: TYPE_FP32 dims: [1] zero_data: '
    'true } }] } input [{ name: "x" data_type: TYPE_FP32 dims: [1] }] output [{ name: "y" data_type: TYPE_FP32 '
    'dims: [1] }]',
    'name: "m" platform: "ensemble" max_batch_size: 1 input [{ name: "a" data_type: TYPE_FP32 dims: [1] }] '
    'output [{ name: "z" data_type: TYPE_FP32 dims: [1] }] ensemble_scheduling { step [{ model_name: "x" '
    'model_version: -1 input_map { key: "in" value: "a" } output_map { key: "out" value: "t" } }, { model_name: '
    '"y" model_version: 2 input_map { key: "in" value: "t" } output_map { key: "out" value: "z" } }] }',
    'name: "m" backend: "onnxruntime" max_batch_size: 4 version_policy { specific { versions: [1, 3] } } '
    'model_warmup [{ name: "w" batch_size: 1 inputs { key: "a" value { data_type: TYPE_STRING dims: [1] '
    'input_data_file: "w.bin" } } }, { name: "z" batch_size: 2 count: 2 inputs { key: "b" value { data_type: '
    'TYPE_FP32 dims: [2, 3] random_data: true } } inputs { key: "c" value { data_type: TYPE_INT8 dims: [3] '
    'zero_data: true } } }] '
    'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "env.tar.gz" } } '
    'optimization { execution_accelerators { cpu_execution_accelerator [{ name: "openvino" }] } }',
]
CONFIG_TOKENS = ["{", "}", "[", "]", ":", ",", "-1", "0", "2147483648", "9223372036854775808",
                 "18446744073709551616", "1e400", "nan", '"\\x"', '"\\777"', '"', "#", "\n", "TYPE_INT32",
                 "KIND_GPU", "99", "-2", "max_batch_size", "dims", "reshape { shape: [] }", "oldest {}",
                 "kind: 99", "data_type: 77", "gpus: [0]", "count: -3", "\udcff", "\x00"]


@st.composite
def config_texts(draw):
    text = draw(st.sampled_from(CONFIG_SAMPLES))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "cut", "replace-number"]))
        if action == "insert":
            text = text[:pos] + " " + draw(st.sampled_from(CONFIG_TOKENS) | st.text(max_size=4)) + " " + text[pos:]
        elif action == "cut":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)):]
        else:
            numbers = list(re.finditer(r"-?\d+", text))
            if numbers:
                m = draw(st.sampled_from(numbers))
                text = text[:m.start()] + draw(st.sampled_from(CONFIG_TOKENS[6:11] + ["0", "-5", "3"])) + text[m.end():]
    return text


@st.composite
def config_jsons(draw):
    from google.protobuf import json_format

    config = parse_config_text(draw(st.sampled_from(CONFIG_SAMPLES)), "m")
    doc = json_format.MessageToDict(config, preserving_proto_field_name=draw(st.booleans()))
    doc = draw(mutate_doc(doc))
    text = dumps(doc)
    # the server receives the config as text (a JSON string, a protobuf string_param)
    return (draw(mutate_bytes(text)) if draw(st.integers(0, 4)) == 0 else text).decode("utf-8", "replace")


# -- repository, logging, trace and shared-memory bodies through the HTTP API -------------------------------

@st.composite
def repository_requests(draw):
    action = draw(st.sampled_from(["load", "load", "unload", "index"]))
    model = draw(st.sampled_from(["broken", "fuzzed", "missing"]))
    path = "/v2/repository/index" if action == "index" else f"/v2/repository/models/{model}/{action}"
    doc: dict = {}
    if action == "index":
        doc["ready"] = draw(json_scalars)
    else:
        params: dict = {}
        if action == "unload":
            params["unload_dependents"] = draw(json_scalars)
        elif draw(st.booleans()):
            config = {"name": model, "backend": draw(st.sampled_from(["onnxruntime", "no_such_backend", ""])),
                      "max_batch_size": draw(st.integers(-1, 2)),
                      "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [1]}]}
            params["config"] = json.dumps(draw(mutate_doc(config))) if draw(st.integers(0, 5)) else draw(json_values)
            for _ in range(draw(st.integers(0, 2))):
                name = draw(st.sampled_from(["1/model.onnx", "config.pbtxt", "../x", "/abs", "", ".", "1/../../x",
                                             "1//a", "a\0b", "1/" + "a" * 300]) | st.text(max_size=10))
                content = draw(st.binary(max_size=16))
                params["file:" + name] = base64.b64encode(content).decode() if draw(st.integers(0, 4)) else \
                    draw(json_scalars)
        doc["parameters"] = params
    body = dumps(draw(mutate_doc(doc)))
    return path, draw(mutate_bytes(body)) if draw(st.integers(0, 4)) == 0 else body


@st.composite
def logging_bodies(draw):
    doc = draw(st.fixed_dictionaries({}, optional={
        "log_info": json_scalars, "log_warning": st.booleans(), "log_error": json_scalars,
        "log_verbose_level": st.integers(-2, 2**64) | json_scalars, "log_format": st.sampled_from(
            ["default", "ISO8601", "x"]) | json_scalars, "log_file": st.sampled_from(["", "/tmp/x"]) | json_scalars}))
    body = dumps(draw(mutate_doc(doc)))
    return draw(mutate_bytes(body)) if draw(st.integers(0, 4)) == 0 else body


@st.composite
def trace_bodies(draw):
    doc = draw(st.fixed_dictionaries({}, optional={
        "trace_level": st.lists(st.sampled_from(["OFF", "TIMESTAMPS", "TENSORS", "x"]), max_size=3) | json_scalars,
        "trace_rate": st.sampled_from(["0", "1", "-1", "1000", "x", "99999999999999999999"]) | json_scalars,
        "trace_count": st.sampled_from(["-1", "0", "5", "x"]) | json_scalars,
        "log_frequency": st.sampled_from(["0", "3", "-1"]) | json_scalars,
        "trace_file": st.sampled_from(["", "/tmp/t"]) | json_scalars,
        "trace_mode": st.sampled_from(["triton", "opentelemetry", "x"]) | json_scalars}))
    body = dumps(draw(mutate_doc(doc)))
    return draw(mutate_bytes(body)) if draw(st.integers(0, 4)) == 0 else body


@st.composite
def shm_requests(draw):
    """(path, action, document) of a shared-memory request; ``KEY`` in the key stands for a real /dev/shm file.
    The fields are mostly present and mostly valid, so that the checks after the first ones are reached."""
    region = draw(st.sampled_from(["r", "r", "r/x", "%2e%2e"]) | st.text(alphabet="abc.%", max_size=5))
    doc = {"key": draw(st.sampled_from(["KEY", "/KEY", "nope", "../etc/passwd", "KEY\0x", "a\0b", "", "/", ".",
                                         "//KEY", "x" * 300])),
           "offset": draw(st.sampled_from([0, 0, 4096, 4095, 2**63, 2**64 - 1, -1])),
           "byte_size": draw(st.sampled_from([1, 8192, 0, 8193, 2**63, 2**64 - 1, -1]))}
    action = draw(st.sampled_from(["register", "register", "register", "unregister", "status"]))
    path = f"/v2/systemsharedmemory/region/{region}/{action}" if region else f"/v2/systemsharedmemory/{action}"
    body = draw(mutate_doc(doc))
    return path, action, body
