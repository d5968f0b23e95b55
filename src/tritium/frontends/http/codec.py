"""KServe v2 JSON and Triton's binary tensor extension, to and from core objects.

Binary inputs become ``np.frombuffer`` views over the request body (no copy);
binary outputs are written once into the response.  JSON tensor data is the
slow path and only used where the client asks for it.  Nothing is allocated
from a size the client declared before that size is checked against the body.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from tritium.core.bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError, request_error
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.shm_regions import OutputPlace, SystemSharedMemory, check_input, check_output, read_input
from tritium.core.types import DataType, Tensor, check_empty_shape

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NO_JSON_TYPES = (DataType.FP16, DataType.BF16)
#: Most dimensions a tensor may have (numpy's own limit is 64).
MAX_RANK = 64


@dataclass(slots=True)
class OutputEncoding:
    """How the client wants outputs back: binary or JSON, per output name, or written into a
    shared-memory region it registered (``shm``; then the response carries no data for it)."""

    binary_default: bool = False
    binary: dict[str, bool] = field(default_factory=dict)
    shm: dict[str, OutputPlace] = field(default_factory=dict)
    regions: SystemSharedMemory | None = None

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _fail(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message)


def parse_json(data: bytes | memoryview, what: str = "request") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise _fail(f"failed to parse the {what} JSON buffer: {e}") from None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a binary request's JSON header says, kept so that the next request with the same header is not
    parsed and checked again: a client sends the same header with every request of the same shapes."""

    #: name, datatype, shape, element count, byte size of each input, in order.
    inputs: tuple[tuple[str, DataType, tuple[int, ...], int, int], ...]
    outputs: tuple[str, ...] | None
    binary_default: bool
    binary: tuple[tuple[str, bool], ...]
    #: Bytes of binary data after the header.
    total: int


#: Plans by header bytes; bounded (cleared when full: headers that vary per request must not grow it).
_PLANS: dict[bytes, _Plan] = {}
MAX_PLANS = 256
_PLAN_REQUEST_KEYS = frozenset(("inputs", "outputs"))
_PLAN_INPUT_KEYS = frozenset(("name", "shape", "datatype", "parameters"))
_PLAN_OUTPUT_KEYS = frozenset(("name", "parameters"))


def decode_infer_request(
    body: bytes | memoryview,
    header_length: int | None,
    model_name: str,
    model_version: int,
    regions: SystemSharedMemory | None = None,
) -> tuple[InferenceRequest, OutputEncoding]:
    """Decode an ``/infer`` body (JSON, or JSON header + binary tail) into a request; ``regions``: the
    shared-memory regions that tensors may name."""
    key = None
    if header_length is None:
        header, tail = body, memoryview(b"")
    else:
        if header_length <= 0 or header_length > len(body):
            raise _fail(f"inference header size should be in range (0, {len(body)}), got: {header_length}")
        view = memoryview(body)
        header, tail = view[:header_length], view[header_length:]
        key = bytes(header)
        plan = _PLANS.get(key)
        if plan is not None and plan.total == len(tail):  # otherwise the full decode says what is wrong
            return _from_plan(plan, tail, model_name, model_version)
    request, encoding, doc = _decode_document(parse_json(header), tail, model_name, model_version, regions)
    if key is not None:
        plan = _plan_of(doc, request, encoding, len(tail))
        if plan is not None:
            if len(_PLANS) >= MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    return request, encoding


def _from_plan(plan: _Plan, tail: memoryview, model_name: str, model_version: int
               ) -> tuple[InferenceRequest, OutputEncoding]:
    request = InferenceRequest(model_name, model_version)
    tensors = []
    offset = 0
    for name, datatype, shape, count, size in plan.inputs:
        end = offset + size
        tensors.append(Tensor(name, datatype, _from_binary(tail[offset:end], datatype, shape, count, name,
                                                           model_name)))
        offset = end
    request.inputs = tensors
    if plan.outputs is not None:
        request.requested_outputs = list(plan.outputs)
    return request, OutputEncoding(plan.binary_default, dict(plan.binary))


def _plan_of(doc: dict[str, Any], request: InferenceRequest, encoding: OutputEncoding, total: int) -> _Plan | None:
    """The plan of a decoded binary request, or None when its header says more than tensors in the body and
    outputs wanted (an id, parameters, shared memory, classification): those are decoded every time."""
    if not doc.keys() <= _PLAN_REQUEST_KEYS:
        return None
    inputs = []
    for item, tensor in zip(doc["inputs"], request.inputs, strict=False):
        params = item.get("parameters")
        if not item.keys() <= _PLAN_INPUT_KEYS or not params or params.keys() != {"binary_data_size"}:
            return None
        inputs.append((tensor.name, tensor.datatype, tuple(item["shape"]), math.prod(item["shape"]),
                       params["binary_data_size"]))
    outputs = doc.get("outputs")
    if outputs is not None:
        for item in outputs:
            params = item.get("parameters")
            if not item.keys() <= _PLAN_OUTPUT_KEYS or (params and not params.keys() <= {"binary_data"}):
                return None
    return _Plan(tuple(inputs), None if request.requested_outputs is None else tuple(request.requested_outputs),
                 encoding.binary_default, tuple(encoding.binary.items()), total)


def _decode_document(doc: Any, tail: memoryview, model_name: str, model_version: int,
                     regions: SystemSharedMemory | None) -> tuple[InferenceRequest, OutputEncoding, Any]:
    """The full decode of a parsed request document (and the document, for :func:`_plan_of`)."""
    if not isinstance(doc, dict):
        raise _fail("Unable to parse 'inputs': the request JSON must be an object")
    request = InferenceRequest(model_name, model_version)
    request_id = doc.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise _fail("Unable to parse 'id': 'id' must be a string")
        request.id = request_id
    params = doc.get("parameters")
    encoding = OutputEncoding()
    if params is not None:
        _request_parameters(params, request, encoding)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        if inputs is None:
            raise _fail("Unable to parse 'inputs': the request has no 'inputs' array")
        raise _fail("Unable to parse 'inputs': 'inputs' must be an array")
    offset = 0
    tensors = []
    for item in inputs:
        tensor, offset = _decode_input(item, tail, offset, model_name, regions, request.id)
        tensors.append(tensor)
    if offset != len(tail):
        raise _fail(f"unexpected additional input data for model '{model_name}'")
    request.inputs = tensors
    outputs = doc.get("outputs")
    if outputs is not None:
        request.requested_outputs = _requested_outputs(outputs, request, encoding, regions)
    return request, encoding, doc


def _request_parameters(params: Any, request: InferenceRequest, encoding: OutputEncoding) -> None:
    if not isinstance(params, dict):
        raise _fail("'parameters' of an inference request must be an object")
    check_parameters(params)
    binary_output = params.pop("binary_data_output", None)  # the frontend's, not the model's (as Triton)
    if binary_output is not None:
        encoding.binary_default = _as_bool(binary_output, "binary_data_output")
    request.parameters = params


def _requested_outputs(outputs: Any, request: InferenceRequest, encoding: OutputEncoding,
                       regions: SystemSharedMemory | None) -> list[str]:
    """The names of the requested outputs; how each is wanted goes into ``encoding`` and ``request``."""
    if not isinstance(outputs, list):
        raise _fail("'outputs' of an inference request must be an array")
    names = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail("each requested output must be an object with a string 'name'")
        name = item["name"]
        names.append(name)
        out_params = item.get("parameters")
        if out_params:
            if not isinstance(out_params, dict):
                raise _fail(f"'parameters' of output '{name}' must be an object")
            if "binary_data" in out_params:
                encoding.binary[name] = _as_bool(out_params["binary_data"], "binary_data")
            if "shared_memory_region" in out_params:
                encoding.shm[name] = _output_place(name, out_params, regions)
                encoding.regions = regions
            if "classification" in out_params:
                count = out_params["classification"]
                if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                    raise _fail(f"'classification' of output '{name}' must be a positive integer")
                if request.classification is None:
                    request.classification = {}
                request.classification[name] = count
    return names


def check_parameters(params: dict[str, Any]) -> None:
    """Request parameters are scalars (Triton's words when one is not)."""
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)):
            raise _fail(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(f"parameter '{key}' must be a boolean, got {value!r}")


def _output_place(name: str, params: dict[str, Any], regions: SystemSharedMemory | None) -> OutputPlace:
    place = _shm_place(name, params, "output")
    check_output(regions, place)  # an unknown region, a bad range or a shrunk file fails before inference
    return place


def _shm_place(name: str, params: dict[str, Any], what: str) -> OutputPlace:
    region = params["shared_memory_region"]
    if not isinstance(region, str):
        raise _fail(f"'shared_memory_region' of {what} '{name}' must be a string")
    numbers = []
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        value = params.get(key, 0)
        if not is_whole_number(value):
            raise _fail(f"'{key}' of {what} '{name}' must be a non-negative integer")
        numbers.append(value)
    return OutputPlace(region, numbers[0], numbers[1])


def is_whole_number(value: Any) -> bool:
    """A JSON non-negative integer (``true`` and ``false`` are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_header(item: Any) -> tuple[str, list[int], DataType]:
    """An input's name, shape and datatype, checked."""
    if not isinstance(item, dict):
        raise _fail("Unable to parse 'inputs': each input must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise _fail("Unable to parse 'name': each input must have a string 'name'")
    shape = item.get("shape")
    if type(shape) is not list or not _valid_shape(shape):
        if isinstance(shape, list) and len(shape) > MAX_RANK:
            raise _fail(f"Unable to parse 'shape': input '{name}' has {len(shape)} dimensions, more than {MAX_RANK}")
        raise _fail(f"Unable to parse 'shape': input '{name}' must have a 'shape' array of non-negative integers")
    datatype_name = item.get("datatype")
    if not isinstance(datatype_name, str):
        raise _fail(f"Unable to parse 'datatype': input '{name}' must have a string 'datatype'")
    datatype = DataType.lookup(datatype_name)
    if datatype is None:
        raise _fail(f"invalid datatype for input {name}")
    return name, shape, datatype


def _decode_input(item: Any, tail: memoryview, offset: int, model_name: str,
                  regions: SystemSharedMemory | None = None, request_id: str = "") -> tuple[Tensor, int]:
    name, shape, datatype = _input_header(item)
    count = math.prod(shape)
    if not count:
        check_empty_shape(shape, name)
    params = item.get("parameters")
    binary_size = None
    in_shm = False
    if params:
        if not isinstance(params, dict):
            raise _fail(f"'parameters' of input '{name}' must be an object")
        binary_size = params.get("binary_data_size")
        in_shm = "shared_memory_region" in params
    has_data = "data" in item
    if has_data + (binary_size is not None) + in_shm != 1:
        given = [field for field, present in (("data", has_data), ("binary_data_size", binary_size is not None),
                                               ("shared_memory_region", in_shm)) if present]
        raise _fail(
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. "
            + ("But set " + " ".join(f"'{f}'" for f in given) if given else "But no field is set")
        )
    if in_shm:
        place = _shm_place(name, params, "input")
        check_input(regions, place)
        try:
            if datatype is not DataType.BYTES:  # before copying: the range may be the whole region
                _check_size(place.byte_size, datatype, count, name, model_name)
            data = memoryview(read_input(regions, place))  # type: ignore[arg-type]  # numpy: no Buffer in stubs < 3.12
            array = _from_binary(data, datatype, shape, count, name, model_name)
        except InvalidArgumentError as e:  # Triton's core checks these sizes: its request-id prefix
            raise request_error(request_id, e.message) from None
        return Tensor(name, datatype, array), offset
    if binary_size is not None:
        if not is_whole_number(binary_size):
            raise _fail(f"'binary_data_size' of input '{name}' must be a non-negative integer")
        end = offset + binary_size
        if end > len(tail):
            raise _fail(
                f"unexpected size for input '{name}', expecting {binary_size} additional bytes for model '{model_name}'"
            )
        chunk = tail[offset:end]
        return Tensor(name, datatype, _from_binary(chunk, datatype, shape, count, name, model_name)), end
    return Tensor(name, datatype, _from_json(item["data"], datatype, shape, count, name)), offset


def _valid_shape(shape: list[Any]) -> bool:
    """At most ``MAX_RANK`` non-negative integers (JSON gives exact ``int``; ``bool`` is refused)."""
    if len(shape) > MAX_RANK:
        return False
    for d in shape:
        if type(d) is not int or d < 0:
            return False
    return True


def decode_raw_request(
    body: bytes | memoryview, model_name: str, model_version: int, input_name: str, datatype: DataType, shape: list[int]
) -> tuple[InferenceRequest, OutputEncoding]:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the body is the bytes of the
    model's single input; ``shape`` may hold one -1, resolved from the body size.  Outputs come back binary."""
    shape = list(shape)
    if datatype is DataType.BYTES:
        count = math.prod(d for d in shape if d >= 0)
        shape = [1 if d < 0 else d for d in shape]
    elif -1 in shape:
        known = math.prod(d for d in shape if d >= 0) * datatype.itemsize
        if shape.count(-1) > 1 or known == 0 or len(body) % known:
            raise _fail(
                f"input byte size mismatch for input 'raw_input' for model '{model_name}'. "
                f"Cannot infer the shape of {len(body)} bytes of {datatype.wire_name}"
            )
        shape[shape.index(-1)] = len(body) // known
        count = math.prod(shape)
    else:
        count = math.prod(shape)
    if not count:
        check_empty_shape(shape, "raw_input")
    request = InferenceRequest(model_name, model_version)
    array = _from_binary(memoryview(body), datatype, shape, count, "raw_input", model_name)
    request.inputs = [Tensor(input_name, datatype, array)]
    return request, OutputEncoding(binary_default=True)


def _from_binary(
    chunk: memoryview, datatype: DataType, shape: Sequence[int], count: int, name: str, model_name: str
) -> np.ndarray:
    if datatype is DataType.BYTES:
        return deserialize_bytes_tensor(chunk, count, name).reshape(shape)
    _check_size(len(chunk), datatype, count, name, model_name)
    return np.frombuffer(chunk, dtype=datatype.numpy_dtype, count=count).reshape(shape)


def _check_size(nbytes: int, datatype: DataType, count: int, name: str, model_name: str) -> None:
    expected = count * datatype.itemsize
    if nbytes != expected:
        raise _fail(
            f"input byte size mismatch for input '{name}' for model '{model_name}'. Expected {expected}, got {nbytes}"
        )


def _from_json(data: Any, datatype: DataType, shape: list[int], count: int, name: str) -> np.ndarray:
    if datatype in _NO_JSON_TYPES:
        raise _fail(
            f"receiving {datatype.wire_name} data via JSON is not supported. Please use the binary data format for "
            f"input {name}"
        )
    if not isinstance(data, list):
        data = [data]
    if datatype is DataType.BYTES:
        flat = _flatten(data)
        if len(flat) != count:
            raise _count_error(name, len(flat), count, shape)
        out = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise _fail(
                    f"Unable to parse JSON bytes array: input '{name}' must hold JSON strings, "
                    f"found {type(value).__name__}"
                )
            out[i] = value.encode("utf-8")
        return out.reshape(shape)
    if count == 0:
        if _flatten(data):
            raise _count_error(name, len(_flatten(data)), count, shape)
        return np.empty(shape, dtype=datatype.numpy_dtype)
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting: Triton only counts the elements
        array = np.asarray(_flatten(data), dtype=object)
    if array.size != count:
        raise _count_error(name, len(_flatten(data)), count, shape)
    kind = array.dtype.kind
    target = datatype.numpy_dtype.kind
    if kind == "O" or (target in "iu" and kind == "f"):
        # numpy picks float64 or object for ints beyond int64 or ragged lists: look at the values themselves.
        return _from_values(_flatten(data), datatype, name).reshape(shape)
    # as Triton: no floats for ints, no bools for numbers
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[target]
    if kind not in allowed:
        raise _type_error(name, datatype)
    with np.errstate(over="ignore", invalid="ignore"):  # a number beyond the type's range becomes inf, as Triton's cast
        return array.astype(datatype.numpy_dtype, casting="unsafe").reshape(shape)


def _type_error(name: str, datatype: DataType) -> InvalidArgumentError:
    expected = {"b": "booleans", "f": "numbers"}.get(datatype.numpy_dtype.kind, "integers")
    return _fail(f"Unable to parse 'data': input '{name}' of type {datatype.wire_name} must hold JSON {expected}")


def _from_values(values: list[Any], datatype: DataType, name: str) -> np.ndarray:
    """The slow path for values numpy could not type by itself; integers wrap to the type's width as in Triton."""
    target = datatype.numpy_dtype
    if target.kind == "b":
        if not all(isinstance(v, bool) for v in values):
            raise _type_error(name, datatype)
        return np.array(values, dtype=target)
    if target.kind == "f":
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _type_error(name, datatype)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond the type's range: inf, as Triton's cast
            return np.array([float(v) for v in values], dtype=target)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _type_error(name, datatype)
    mask = (1 << (8 * target.itemsize)) - 1
    unsigned = np.dtype(f"<u{target.itemsize}")
    return np.array([v & mask for v in values], dtype=unsigned).view(target)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _count_error(name: str, got: int, count: int, shape: list[int]) -> InvalidArgumentError:
    return _fail(
        f"Unable to parse 'data': Shape does not match true shape of 'data' field: input '{name}' has shape "
        f"{_shape_str(shape)} ({count} elements) but 'data' holds {got}"
    )


def _shape_str(shape: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def encode_infer_response(
    response: InferenceResponse, encoding: OutputEncoding
) -> tuple[list[bytes | memoryview], int | None]:
    """The response body as pieces to write, and the JSON header length when any output is binary."""
    outputs = []
    blobs: list[bytes | memoryview] = []
    shm = encoding.shm
    for tensor in response.outputs:
        array = tensor.data
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype.wire_name, "shape": list(array.shape)}
        if shm and tensor.name in shm:  # written into the client's region: no data in the response
            assert encoding.regions is not None
            encoding.regions.write_output(tensor.name, _to_binary(array, tensor.datatype), shm[tensor.name])
        elif encoding.is_binary(tensor.name):
            blob = _to_binary(array, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {"id": response.id} if response.id else {}
    doc["model_name"] = response.model_name
    doc["model_version"] = str(response.model_version)
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_JSON_OPTIONS)
    if not blobs:
        return [header], None
    return [header, *blobs], len(header)


def _to_binary(array: np.ndarray, datatype: DataType) -> bytes | memoryview:
    if datatype is DataType.BYTES:
        return serialize_bytes_tensor(array)
    array = np.ascontiguousarray(array)
    if datatype is DataType.BF16:  # ml_dtypes' bfloat16 has no buffer format: its bits as they are
        array = array.view(np.uint16)
    return memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]  # (numpy stubs, as above)


def _to_json_data(tensor: Tensor) -> Any:
    datatype = tensor.datatype
    array = tensor.data
    if datatype in _NO_JSON_TYPES:
        raise _fail(
            f"sending {datatype.wire_name} data via JSON is not supported. "
            f"Please request binary data for output {tensor.name}"
        )
    if datatype is DataType.BYTES:
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    if datatype is DataType.FP32:
        # As Triton writes them: the float widened to a double (0.1 is 0.10000000149011612), the same float
        # back in every client
        return array.astype(np.float64).reshape(-1)
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    return flat
