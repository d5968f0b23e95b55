"""Triton's gRPC messages (``ModelInferRequest`` / ``ModelInferResponse``) to and from core objects.

The request deserializer and response serializer work on the wire bytes directly for the tensor
data, because protobuf's Python API copies every ``bytes`` field twice (into its arena, then into
a new ``bytes`` object):

* ``raw_input_contents`` (field 7) are cut out of the received message as ``memoryview`` slices
  before protobuf parses the rest, so inputs become ``np.frombuffer`` views of the bytes gRPC
  handed us (zero copy);
* ``raw_output_contents`` (field 6) are appended to the serialized response header straight from
  the output arrays' memory, so each output is copied once, into the message gRPC sends.

Typed ``InferTensorContents`` are decoded too (the slow path); answers are always raw, as Triton's.

Tensors may also live in the client's system shared-memory regions (``shared_memory_region``,
``shared_memory_byte_size``, ``shared_memory_offset`` parameters): such an input is copied out of the
region (``core.shm_regions``: never mapped) and takes no ``raw_input_contents`` entry (the entries go, in
order, to the other inputs); such an output is written into its region and answered with an empty
``raw_output_contents`` entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from tritium._proto import grpc_service_pb2 as pb
from tritium.core.bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError, request_error
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.shm_regions import OutputPlace, SystemSharedMemory, check_input, check_output, read_input
from tritium.core.types import DataType, Tensor, check_empty_shape

#: Most dimensions a tensor may have (numpy's own limit is 64), as the HTTP frontend.
MAX_RANK = 64
_RAW_INPUT_FIELD = 7
_ID_FIELD = 3
_ID_TAG = 0x1A  # field 3, length-delimited
_RAW_TAG = 0x3A  # field 7, length-delimited
_RAW_OUTPUT_TAG = b"\x32"  # field 6, length-delimited
_STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited

#: The typed-contents field that carries each data type (FP16/BF16 have none: raw only).
CONTENTS_FIELD: dict[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}
_ALL_CONTENTS = sorted(set(CONTENTS_FIELD.values()))


@dataclass(frozen=True, slots=True)
class ShmOutputs:
    """Requested outputs that go into the client's shared-memory regions instead of the response."""

    regions: SystemSharedMemory
    places: dict[str, OutputPlace]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a ``ModelInferRequest`` says besides its id and raw contents, kept so that the next request
    with the same bytes there is not parsed and checked again: a client sends the same model, inputs
    and outputs with every request of the same shapes (only the id and the tensor data change)."""

    model_name: str
    model_version: str
    #: name, data type, shape, element count, byte size (-1: BYTES, checked when deserialized) of each input.
    inputs: tuple[tuple[str, DataType, tuple[int, ...], int, int], ...]
    outputs: tuple[str, ...] | None
    #: The key split where an id goes (fields 1-2, then 4-6), when its fields are in protobuf's order;
    #: ``None`` otherwise (its messages are always scanned).
    before: bytes | None = None
    after: bytes = b""


_PLANS: dict[bytes, _Plan] = {}
#: Plans kept at most (all are dropped when full), and the longest message remainder that gets one.
MAX_PLANS = 256
MAX_PLAN_KEY = 4096
#: The plan of the last message decoded by plan, tried first (held in a list: one slot, set in place).
_last: list[_Plan | None] = [None]


@dataclass(slots=True)
class DecodedRequest:
    """A parsed ``ModelInferRequest`` whose raw contents are views of the received bytes.

    ``error`` is set instead of raising, so a malformed message becomes a per-request error
    (a status for ``ModelInfer``, an ``error_message`` on a stream) rather than a broken call.
    ``message`` is ``None`` when a plan (of an earlier request with the same bytes) stands for it.
    """

    message: pb.ModelInferRequest | None
    raw: list[memoryview]
    error: str | None = None
    model_name: str = ""
    model_version: str = ""
    id: str = ""
    plan: _Plan | None = None
    #: The message's bytes besides its id and raw contents, when a plan may be made of them.
    key: bytes | None = None
    #: Set by :func:`to_inference_request` when some requested output goes into shared memory.
    shm_outputs: ShmOutputs | None = None


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip_group(data: bytes | memoryview, pos: int, number: int) -> int:
    """Past the end of a group (wire type 3, proto2's): protobuf keeps one as an unknown field, so the
    pre-parser must step over it too (raw contents inside it are not the message's)."""
    open_groups = [number]
    size = len(data)
    while open_groups:
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 4:
            if key >> 3 != open_groups.pop():
                raise DecodeError("mismatched end of group")
        elif wire_type == 3:
            open_groups.append(key >> 3)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > size:
            raise DecodeError("truncated group")
    return pos


def _varint_bytes(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_request_bytes(data: bytes | memoryview) -> DecodedRequest:
    """gRPC request deserializer for ``ModelInfer`` and ``ModelStreamInfer`` (never raises).

    The raw contents (field 7) and the id (field 3) are cut out of the message; the rest is the key of a
    plan (what an earlier message with the same rest meant).  With a plan, protobuf does not parse the
    message at all; a message laid out as the last plan's (the same rest, then an id, then raw contents:
    how every client's protobuf lays it out) is not even scanned field by field.
    """
    view = memoryview(data)
    last = _last[0]
    if last is not None:
        decoded = _match(last, view)
        if decoded is not None:
            return decoded
    try:
        parts, raw, ids = _scan(view)
        key = b"".join(parts) if len(parts) != 1 else bytes(parts[0])
        plan = _PLANS.get(key)
        if plan is not None and _fits(plan, raw):
            try:
                request_id = str(ids[-1][_id_offset(ids[-1]):], "utf-8") if ids else ""
            except UnicodeDecodeError:
                pass  # protobuf's parse below says what is wrong
            else:
                _last[0] = plan
                return DecodedRequest(None, raw, None, plan.model_name, plan.model_version, request_id, plan)
        message = pb.ModelInferRequest()
        message.ParseFromString(b"".join([key, *ids]) if ids else key)
        return DecodedRequest(message, raw, None, message.model_name, message.model_version, message.id,
                              key=key if len(key) <= MAX_PLAN_KEY else None)
    except DecodeError as e:
        return DecodedRequest(pb.ModelInferRequest(), [], f"failed to parse the ModelInferRequest message: {e}")


def _scan(view: memoryview) -> tuple[list[memoryview], list[memoryview], list[memoryview]]:
    """The message's top-level fields: the parts that are neither id nor raw contents, the raw contents'
    values, and the id fields (whole)."""
    raw: list[memoryview] = []
    parts: list[memoryview] = []
    ids: list[memoryview] = []
    pos, start, size = 0, 0, len(view)
    while pos < size:
        field_start = pos
        tag = view[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(view, pos)
        wire_type = tag & 7
        if wire_type == 2:
            if pos < size and view[pos] < 0x80:
                end = pos + 1 + view[pos]
                pos += 1
            else:
                length, pos = _varint(view, pos)
                end = pos + length
            if end > size:
                raise DecodeError("truncated length-delimited field")
            number = tag >> 3
            if number == _RAW_INPUT_FIELD or number == _ID_FIELD:
                if field_start > start:
                    parts.append(view[start:field_start])
                if number == _RAW_INPUT_FIELD:
                    raw.append(view[pos:end])
                else:
                    ids.append(view[field_start:end])
                start = end
            pos = end
        elif wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 3:
            pos = _skip_group(view, pos, tag >> 3)
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
    if pos != size:
        raise DecodeError("truncated message")
    if start < size:
        parts.append(view[start:])
    return parts, raw, ids


def _match(plan: _Plan, view: memoryview) -> DecodedRequest | None:
    """The request when ``view`` is the plan's key (fields before the id, an id or none, the fields after
    it) followed by exactly one raw contents field per input; ``None`` otherwise (then it is scanned)."""
    before = plan.before
    if before is None:
        return None
    size = len(view)
    pos = len(before)
    if view[:pos] != before:
        return None
    request_id = ""
    try:
        if pos < size and view[pos] == _ID_TAG:
            length, start = _varint(view, pos + 1)
            pos = start + length
            if pos > size:
                return None  # (the scan says what is wrong)
            request_id = str(view[start:pos], "utf-8")
        after = plan.after
        if after:
            end = pos + len(after)
            if view[pos:end] != after:
                return None
            pos = end
        raw = []
        for item in plan.inputs:
            if pos >= size or view[pos] != _RAW_TAG:
                return None
            length, start = _varint(view, pos + 1)
            pos = start + length
            if pos > size or (item[4] >= 0 and length != item[4]):
                return None
            raw.append(view[start:pos])
    except (DecodeError, UnicodeDecodeError):
        return None
    if pos != size:
        return None
    return DecodedRequest(None, raw, None, plan.model_name, plan.model_version, request_id, plan)


def _id_offset(field: memoryview) -> int:
    """Where the id's text starts in its field (past its tag and length)."""
    _, pos = _varint(field, 0)
    _, pos = _varint(field, pos)
    return pos


def _fits(plan: _Plan, raw: list[memoryview]) -> bool:
    """Whether the raw contents are what the plan's inputs need (otherwise the full decode says what is wrong)."""
    if len(raw) != len(plan.inputs):
        return False
    for item, data in zip(plan.inputs, raw, strict=True):
        if item[4] >= 0 and len(data) != item[4]:
            return False
    return True



# -- parameters -------------------------------------------------------------------------------------


def parameter_value(key: str, param: pb.InferParameter) -> Any:
    """An ``InferParameter`` as a Python value (bool, int, str or float)."""
    choice = param.WhichOneof("parameter_choice")
    if choice is None:
        raise InvalidArgumentError(
            f"invalid value type for '{key}' parameter, expected int64_param, bool_param, string_param, "
            "double_param or uint64_param."
        )
    return getattr(param, choice)


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value >= 1 << 63:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


# -- requests ---------------------------------------------------------------------------------------


def to_inference_request(
    decoded: DecodedRequest, model_name: str, model_version: int, regions: SystemSharedMemory | None = None
) -> InferenceRequest:
    """Build the core request; tensor checks name the input and model, in the HTTP frontend's words.

    ``regions``: the shared-memory regions tensors may name (none: such a request is refused).  Outputs
    bound for a region are recorded in ``decoded.shm_outputs`` for the response encoder.
    """
    plan = decoded.plan
    if plan is not None:
        return _from_plan(plan, decoded, model_name, model_version)
    message = decoded.message
    assert message is not None  # (a decoded request has its message or its plan)
    request = InferenceRequest(model_name, model_version, message.id)
    if message.parameters:
        request.parameters = {k: parameter_value(k, v) for k, v in message.parameters.items()}
    raw = decoded.raw
    inputs = message.inputs
    tensors = []  # raw contents beyond the inputs' are ignored, as Triton 2.51 does
    uses_raw = bool(raw)
    next_raw = 0  # as Triton: raw contents go, in order, to the inputs that are not in shared memory
    plain = True  # no parameters anywhere, every input in raw contents: a plan can stand for this message
    for item in inputs:
        if item.parameters:
            plain = False
            place = _shm_place(item.parameters, item.name)
            if place is not None:
                tensors.append(_decode_input(item, None, uses_raw, model_name, place, regions, message.id))
                continue
        tensors.append(_decode_input(item, raw[next_raw] if next_raw < len(raw) else None, uses_raw, model_name))
        next_raw += 1
    request.inputs = tensors
    if message.outputs:
        places = _requested_outputs(message, request, regions)
        if places:
            assert regions is not None  # _output_place refuses shared memory without regions
            decoded.shm_outputs = ShmOutputs(regions, places)
        plain = plain and not request.classification and not any(output.parameters for output in message.outputs)
    if decoded.key is not None and plain and uses_raw and len(raw) == len(tensors) and not message.parameters:
        _remember(decoded.key, message, tensors, request.requested_outputs)
    return request


def _remember(key: bytes, message: pb.ModelInferRequest, tensors: list[Tensor], outputs: list[str] | None) -> None:
    inputs = tuple(
        (t.name, t.datatype, tuple(t.data.shape), t.data.size, -1 if t.datatype is DataType.BYTES else t.data.nbytes)
        for t in tensors
    )
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    before, after = _split_key(key)
    _PLANS[key] = _Plan(message.model_name, message.model_version, inputs, None if outputs is None else tuple(outputs),
                        before, after)


def _split_key(key: bytes) -> tuple[bytes | None, bytes]:
    """The key's fields numbered below the id's and above it, when they are in ascending order."""
    view = memoryview(key)
    numbers = []
    split = len(key)
    pos = 0
    try:
        while pos < len(key):
            start = pos
            tag, pos = _varint(view, pos)
            wire_type = tag & 7
            if wire_type != 2:
                return None, b""  # (ModelInferRequest has no such field: left to the scan)
            length, pos = _varint(view, pos)
            pos += length
            numbers.append(tag >> 3)
            if tag >> 3 > _ID_FIELD and split == len(key):
                split = start
    except DecodeError:
        return None, b""
    if numbers != sorted(numbers):
        return None, b""
    return key[:split], key[split:]


def _from_plan(plan: _Plan, decoded: DecodedRequest, model_name: str, model_version: int) -> InferenceRequest:
    """The request of a message whose plan is known: its inputs decoded as the full decode decodes them."""
    request = InferenceRequest(model_name, model_version, decoded.id)
    request.inputs = [Tensor(name, datatype, _from_raw(data, datatype, shape, count, name, model_name))
                      for (name, datatype, shape, count, _), data in zip(plan.inputs, decoded.raw, strict=True)]
    if plan.outputs is not None:
        request.requested_outputs = list(plan.outputs)
    return request


def _requested_outputs(
    message: pb.ModelInferRequest, request: InferenceRequest, regions: SystemSharedMemory | None
) -> dict[str, OutputPlace]:
    """Set the request's outputs (and classifications); answer where outputs bound for shared memory go."""
    names = []
    places: dict[str, OutputPlace] = {}
    for output in message.outputs:
        params = output.parameters
        if params:
            place = _shm_place(params, output.name)
            if place is not None:
                places[output.name] = _output_place(place, "classification" in params, regions)
            if "classification" in params:
                count = params["classification"].int64_param
                if count < 1:
                    raise InvalidArgumentError(f"'classification' of output '{output.name}' must be a positive integer")
                if request.classification is None:
                    request.classification = {}
                request.classification[output.name] = count
        names.append(output.name)
    request.requested_outputs = names
    return places


def _decode_input(
    item: pb.ModelInferRequest.InferInputTensor,
    raw: memoryview | None,
    uses_raw: bool,
    model_name: str,
    place: OutputPlace | None = None,
    regions: SystemSharedMemory | None = None,
    request_id: str = "",
) -> Tensor:
    """One input, from its raw contents, its typed contents, or (``place``) a shared-memory region."""
    name = item.name
    shape = list(item.shape)
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(
            f"Unable to parse 'shape': input '{name}' has {len(shape)} dimensions, more than {MAX_RANK}"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(
            f"Unable to parse 'shape': input '{name}' must have a shape of non-negative integers, got {shape}"
        )
    datatype = DataType.lookup(item.datatype)
    if datatype is None:
        raise InvalidArgumentError(f"invalid datatype for input {name}")
    count = math.prod(shape)
    if not count:
        check_empty_shape(shape, name)
    has_contents = item.HasField("contents")
    if place is not None:
        if has_contents:
            raise InvalidArgumentError(
                f"unexpected 'content' provided when using shared memory for input tensor '{name}' for model "
                f"'{model_name}'"
            )
        check_input(regions, place)
        try:
            if datatype is not DataType.BYTES and place.byte_size != count * datatype.itemsize:
                # before copying: the range may be the whole region
                raise _size_mismatch(name, model_name, count * datatype.itemsize, place.byte_size)
            data = memoryview(read_input(regions, place))  # type: ignore[arg-type]  # numpy: no Buffer in stubs < 3.12
            return Tensor(name, datatype, _from_raw(data, datatype, shape, count, name, model_name))
        except InvalidArgumentError as e:  # Triton's core checks these sizes: its request-id prefix
            raise request_error(request_id, e.message) from None
    if uses_raw:
        if has_contents:
            raise InvalidArgumentError(
                f"contents field must not be specified when using raw_input_contents for '{name}' for model "
                f"'{model_name}'"
            )
        if raw is None:
            raise _no_data(name, model_name)
        return Tensor(name, datatype, _from_raw(raw, datatype, shape, count, name, model_name))
    if not has_contents:
        raise _no_data(name, model_name)
    return Tensor(name, datatype, _from_contents(item.contents, datatype, shape, count, name, model_name))


def _no_data(name: str, model_name: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"unable to find data for input tensor '{name}' for model '{model_name}' in request.")


def _from_raw(raw: memoryview, datatype: DataType, shape: Sequence[int], count: int, name: str, model: str
              ) -> np.ndarray:
    if datatype is DataType.BYTES:
        return deserialize_bytes_tensor(raw, count, name).reshape(shape)
    expected = count * datatype.itemsize
    if len(raw) != expected:
        raise _size_mismatch(name, model, expected, len(raw))
    return np.frombuffer(raw, dtype=datatype.numpy_dtype, count=count).reshape(shape)


def _size_mismatch(name: str, model: str, expected: int, got: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {got}"
    )


def _from_contents(
    contents: pb.InferTensorContents, datatype: DataType, shape: list[int], count: int, name: str, model: str
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgumentError(
            f"{datatype.wire_name} data for input '{name}' of model '{model}' can only be sent in raw_input_contents"
        )
    for other in _ALL_CONTENTS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgumentError(
                f"unexpected explicit tensor data for input tensor '{name}' for model '{model}' of type "
                f"'{datatype.wire_name}', expected the '{field}' field, found '{other}'"
            )
    values = getattr(contents, field)
    if len(values) != count:
        if datatype is DataType.BYTES:
            raise InvalidArgumentError(
                f"unexpected number of string elements {len(values)} for input '{name}' for model '{model}', "
                f"expecting {count}"
            )
        raise _size_mismatch(name, model, count * datatype.itemsize, len(values) * datatype.itemsize)
    if datatype is DataType.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values, dtype=_WIDE[field]) if count else np.empty(0, dtype=datatype.numpy_dtype)
    return wide.astype(datatype.numpy_dtype, copy=False).reshape(shape)


#: numpy type of each typed-contents field, before narrowing to the tensor's type (as Triton, values wrap).
_WIDE = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


# -- shared memory ----------------------------------------------------------------------------------


def _shm_place(params: Any, tensor: str) -> OutputPlace | None:
    """Where a tensor's shared-memory parameters put it (inputs too), or ``None`` when they name no region.

    Triton's checks in its order and words: the region is a ``string_param``, the offset (default 0) and
    the byte size ``int64_param``s, and neither number comes without a region nor a region without a size.
    """
    region: str | None = None
    if "shared_memory_region" in params:
        param = params["shared_memory_region"]
        if param.WhichOneof("parameter_choice") != "string_param":
            raise _bad_shm_type("shared_memory_region", tensor, "string_param")
        region = param.string_param
    offset = byte_size = 0
    if "shared_memory_offset" in params:
        offset = _shm_int(params["shared_memory_offset"], "shared_memory_offset", tensor, region)
    if "shared_memory_byte_size" in params:
        byte_size = _shm_int(params["shared_memory_byte_size"], "shared_memory_byte_size", tensor, region)
    elif region is not None:
        raise InvalidArgumentError(
            f"'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
            f"'{tensor}'"
        )
    return None if region is None else OutputPlace(region, offset, byte_size)


def _shm_int(param: pb.InferParameter, key: str, tensor: str, region: str | None) -> int:
    if region is None:
        raise InvalidArgumentError(
            f"'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{tensor}'"
        )
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise _bad_shm_type(key, tensor, "int64_param")
    return param.int64_param


def _bad_shm_type(key: str, tensor: str, expected: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid value type for '{key}' parameter for tensor '{tensor}', expected {expected}.")


def _output_place(place: OutputPlace, classification: bool, regions: SystemSharedMemory | None) -> OutputPlace:
    """Check a requested output's region before inference, so a bad one costs no model run (as Triton)."""
    if classification:
        raise InvalidArgumentError("output can't set both 'shared_memory_region' and 'classification'")
    check_output(regions, place)
    return place


# -- responses --------------------------------------------------------------------------------------


def encode_response(
    response: InferenceResponse, extra: dict[str, Any] | None = None, shm: ShmOutputs | None = None
) -> list[bytes | memoryview]:
    """A serialized ``ModelInferResponse`` as pieces to join: header fields, then each raw output.

    Written field by field in protobuf's order (the same bytes as ``SerializeToString``), from pieces
    remembered per model, output and parameters: a model answers the same names, types and shapes again
    and again.  An output in ``shm`` is written into its region and gets an empty ``raw_output_contents``
    entry, as Triton answers (the entries stay one per output).
    """
    pieces: list[bytes | memoryview] = [_remembered(_HEADS, (response.model_name, response.model_version),
                                                    _head_bytes)]
    if response.id:
        pieces.append(_string_field(_ID_TAG, response.id))
    params = {**response.parameters, **extra} if extra else response.parameters
    if params:
        try:
            pieces.append(_remembered(_PARAMETERS, tuple(params.items()), _parameters_bytes))
        except TypeError:  # a value that is not hashable: encoded each time
            pieces.append(_parameters_bytes(tuple(params.items())))
    raws: list[bytes | memoryview] = []
    for tensor in response.outputs:
        array = tensor.data
        pieces.append(_remembered(_OUTPUTS, (tensor.name, tensor.datatype.wire_name, array.shape), _output_bytes))
        blob = _to_raw(array, tensor.datatype)
        if shm is not None and (place := shm.places.get(tensor.name)) is not None:
            shm.regions.write_output(tensor.name, blob, place)
            blob = b""
        raws.append(_RAW_OUTPUT_TAG + _varint_bytes(len(blob)))
        raws.append(blob)
    pieces += raws
    return pieces


#: Encoded pieces of responses, by what they encode (each table dropped whole when full).
_HEADS: dict[tuple[str, int], bytes] = {}
_PARAMETERS: dict[tuple[tuple[str, Any], ...], bytes] = {}
_OUTPUTS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
MAX_REMEMBERED = 1024
#: The longest piece remembered (a model may answer parameters as long as a request's, each one different):
#: longer ones are encoded every time, so the tables hold at most about 2 MiB each.
MAX_REMEMBERED_PIECE = 1024


def _remembered(table: dict[Any, bytes], key: Any, encode: Callable[[Any], bytes]) -> bytes:
    piece = table.get(key)
    if piece is None:
        piece = encode(key)
        if len(piece) <= MAX_REMEMBERED_PIECE:
            if len(table) >= MAX_REMEMBERED:
                table.clear()
            table[key] = piece
    return piece


def _head_bytes(key: tuple[str, int]) -> bytes:
    return pb.ModelInferResponse(model_name=key[0], model_version=str(key[1])).SerializeToString()


def _parameters_bytes(items: tuple[tuple[str, Any], ...]) -> bytes:
    message = pb.ModelInferResponse()
    target = message.parameters
    for key, value in items:
        set_parameter(target[key], value)
    return message.SerializeToString()


def _output_bytes(key: tuple[str, str, tuple[int, ...]]) -> bytes:
    name, datatype, shape = key
    message = pb.ModelInferResponse()
    message.outputs.add(name=name, datatype=datatype, shape=shape)
    return message.SerializeToString()


def _string_field(tag: int, value: str) -> bytes:
    data = value.encode()
    return bytes((tag,)) + _varint_bytes(len(data)) + data


def _to_raw(array: np.ndarray, datatype: DataType) -> bytes | memoryview:
    if datatype is DataType.BYTES:
        return serialize_bytes_tensor(array)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if datatype is DataType.BF16:  # ml_dtypes' bfloat16 has no buffer format: its bits as they are
        array = array.view(np.uint16)
    return memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]  # (numpy stubs, as above)


def infer_response_bytes(response: InferenceResponse, shm: ShmOutputs | None = None) -> bytes:
    """The ``ModelInfer`` answer, serialized (outputs copied once, into this buffer or their region)."""
    return b"".join(encode_response(response, None, shm))


def stream_response_bytes(response: InferenceResponse, final: bool, shm: ShmOutputs | None = None) -> bytes:
    """A ``ModelStreamInferResponse`` carrying ``response``, with Triton's ``triton_final_response`` flag."""
    pieces = encode_response(response, {"triton_final_response": final}, shm)
    size = sum(len(p) for p in pieces)
    return b"".join([_STREAM_RESPONSE_TAG, _varint_bytes(size), *pieces])


def stream_error_bytes(message: str, request_id: str) -> bytes:
    """A ``ModelStreamInferResponse`` reporting one request's error in-band (the stream stays open)."""
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id)
    ).SerializeToString()
